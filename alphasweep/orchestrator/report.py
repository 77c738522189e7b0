"""The sweep report: best objective per pair, a table, and plots, read back from the Optuna storage."""

from __future__ import annotations

from pathlib import Path

import optuna

from alphasweep.config import SweepConfig
from alphasweep.orchestrator.sweep import pair_summary, study_name


def build_report(cfg: SweepConfig) -> dict:
    storage = optuna.storages.RDBStorage(cfg.optuna_storage())
    known = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    pairs = []
    for model, domain in cfg.pairs():
        name = study_name(model.name, domain.name)
        if name in known:
            pairs.append(pair_summary(optuna.load_study(study_name=name, storage=storage), model.name, domain.name))
    return {"mlflow_uri": cfg.mlflow_uri(), "optuna_storage": cfg.optuna_storage(), "pairs": pairs}


def format_table(report: dict) -> str:
    head = ("pair", "continuum", "probe p", "NLL", "p", "best objective", "best", "trials")
    rows = [head]
    for p in report["pairs"]:
        s = p["scores"]
        rows.append((
            f"{p['model']}/{p['domain']}", p["continuum"] or "-", _fmt(p["probe_mean_p"]),
            _fmt(s.get("original")), _fmt(s.get("p")), p["best_objective"] or "-", _fmt(p["best_score"]),
            f"{p['trials']}" + (f" (+{p['stopped_early']} stopped)" if p["stopped_early"] else ""),
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def effective_alpha(config: dict) -> float | None:
    """Where an objective sits on the alpha axis: NLL = 0, p = 1, general = its alpha; else None."""
    family = config.get("family")
    return {"nll": 0.0, "p": 1.0}.get(family, config.get("alpha") if family == "general" else None)


def alpha_points(study: optuna.Study) -> list[tuple[float, float]]:
    """(alpha, score) of the study's complete trials whose objective has an alpha."""
    return sorted((effective_alpha(t.params), t.value) for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and effective_alpha(t.params) is not None)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_score_vs_alpha(curves: dict[str, list[tuple[float, float]]], path: Path) -> Path:
    """One line per pair: benchmark accuracy against alpha (symlog axis: 0 = NLL, 1 = p)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts in curves.items():
        if pts:
            ax.plot([a for a, _ in pts], [v for _, v in pts], "o-", label=label)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("alpha (0 = NLL, 1 = p)")
    ax.set_ylabel("benchmark accuracy")
    ax.set_title("score vs alpha per pair")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_report(cfg: SweepConfig, report: dict, out_dir: Path) -> list[Path]:
    """score vs alpha per pair, and probe mean p vs best alpha across pairs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(cfg.optuna_storage())
    curves, best_alpha = {}, []
    for p in report["pairs"]:
        label = f"{p['model']}/{p['domain']}"
        pts = alpha_points(optuna.load_study(study_name=study_name(p["model"], p["domain"]), storage=storage))
        curves[f"{label} ({p['continuum']})"] = pts
        if pts and p["probe_mean_p"] is not None:
            best_alpha.append((p["probe_mean_p"], max(pts, key=lambda x: x[1])[0], label))
    paths = [plot_score_vs_alpha(curves, out_dir / "score_vs_alpha.png")]

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for mean_p, alpha, label in best_alpha:
        ax.scatter(mean_p, alpha)
        ax.annotate(label, (mean_p, alpha), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("probe: mean target probability of the base model")
    ax.set_ylabel("best alpha")
    ax.set_title("capability continuum")
    ax.grid(alpha=0.3)
    paths.append(out_dir / "continuum.png")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths
