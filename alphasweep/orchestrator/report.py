"""The sweep report: best objective per pair, a table, and plots, read back from the Optuna storage."""

from __future__ import annotations

from pathlib import Path

import optuna

from alphasweep.config import SweepConfig
from alphasweep.orchestrator.results import alpha_points, load_study, pair_summary, repeats_study_name, study_name


def build_report(cfg: SweepConfig) -> dict:
    storage = optuna.storages.RDBStorage(cfg.optuna_storage())
    pairs = []
    for model, domain in cfg.pairs():
        name = study_name(model.name, domain.name)
        study = load_study(storage, name)
        if study is not None:
            pairs.append(pair_summary(study, model.name, domain.name, load_study(storage, repeats_study_name(name))))
    return {"mlflow_uri": cfg.mlflow_uri(), "optuna_storage": cfg.optuna_storage(), "pairs": pairs}


def format_table(report: dict) -> str:
    """One row per pair (scores are means over seeds; the best's 95% interval), then each pair's verdict."""
    head = ("pair", "continuum", "probe p", "NLL", "p", "best objective", "best [95% CI]", "trials", "seeds")
    rows = [head]
    for p in report["pairs"]:
        s = p["scores"]
        ci = f" [{p['best_ci'][0]:.3f}, {p['best_ci'][1]:.3f}]" if p["best_ci"] else ""
        rows.append((
            f"{p['model']}/{p['domain']}", p["continuum"] or "-", _fmt(p["probe_mean_p"]),
            _fmt(s.get("original")), _fmt(s.get("p")), p["best_objective"] or "-", _fmt(p["best_score"]) + ci,
            f"{p['trials']}" + (f" (+{p['stopped_early']} stopped)" if p["stopped_early"] else ""),
            ",".join(map(str, p["seeds"])) or "-",
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    table = "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    return table + "".join(f"\n{p['model']}/{p['domain']}: {p['verdict']}" for p in report["pairs"])


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


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
        name = study_name(p["model"], p["domain"])
        pts = alpha_points(load_study(storage, name), load_study(storage, repeats_study_name(name)))
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
