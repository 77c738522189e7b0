"""The sweep report: best objective per pair, a table, and plots, read back from the Optuna storage."""

from __future__ import annotations

from pathlib import Path

import optuna

from alphasweep.config import SweepConfig
from alphasweep.orchestrator.results import alpha_points, load_study, pair_summary, repeats_study_name, study_name
from alphasweep.plots import plot_continuum, plot_score_vs_alpha
from alphasweep.table import text_table


def build_report(cfg: SweepConfig) -> dict:
    storage = optuna.storages.RDBStorage(cfg.optuna_storage())
    pairs = []
    for model, domain in cfg.pairs():
        name = study_name(model.name, domain.name)
        study = load_study(storage, name)
        if study is not None:
            pairs.append(pair_summary(study, model.name, domain.name, load_study(storage, repeats_study_name(name))))
    return {"mlflow_uri": cfg.mlflow_uri(), "optuna_storage": cfg.optuna_storage(), "pairs": pairs}


def format_table(report: dict, *, objectives: bool = True) -> str:
    """One row per pair (scores are means over seeds; the best's 95% interval); then per pair its verdict and
    (with `objectives`) its objectives, best first: mean, spread and 95% interval over seeds (over items for
    one run). The sweep's console leaves the objectives to `alphasweep report`, to stay short."""
    head = ("pair", "continuum", "probe p", "NLL", "p", "best objective", "best [95% CI]", "trials", "seeds")
    rows = []
    for p in report["pairs"]:
        s = p["scores"]
        rows.append((
            f"{p['model']}/{p['domain']}", p["continuum"] or "-", _fmt(p["probe_mean_p"]),
            _fmt(s.get("original")), _fmt(s.get("p")), p["best_objective"] or "-",
            _fmt(p["best_score"]) + _fmt_ci(p["best_ci"]),
            f"{p['trials']}" + (f" (+{p['stopped_early']} stopped)" if p["stopped_early"] else ""),
            ",".join(map(str, p["seeds"])) or "-",
        ))
    parts = [text_table(head, rows, right={2, 3, 4})]
    if not objectives:
        parts.append("")
    for p in report["pairs"]:
        parts.append(("\n" if objectives else "") + f"{p['model']}/{p['domain']}: {p['verdict']}")
        if objectives and p["objectives"]:
            table = [(name, _fmt(o["score"]), f"{o['std']:.3f}" if len(o["seeds"]) > 1 else "-",
                      _fmt_ci(o["ci"]).strip() or "-", ",".join(o["seeds"]) + (" (confirm)" if o["confirmed"] else ""))
                     for name, o in p["objectives"].items()]
            parts.append(text_table(("objective", "mean", "std", "95% CI", "seeds"), table, right={1, 2}))
    return "\n".join(parts)


def _fmt_ci(ci: list[float] | None) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def plot_report(cfg: SweepConfig, report: dict, out_dir: Path) -> list[Path]:
    """score vs alpha per pair, and probe mean p vs best alpha across pairs."""
    storage = optuna.storages.RDBStorage(cfg.optuna_storage())
    curves, best_alpha = {}, []
    for p in report["pairs"]:
        label = f"{p['model']}/{p['domain']}"
        name = study_name(p["model"], p["domain"])
        pts = alpha_points(load_study(storage, name), load_study(storage, repeats_study_name(name)))
        curves[f"{label} ({p['continuum']})"] = pts
        if pts and p["probe_mean_p"] is not None:
            best_alpha.append((p["probe_mean_p"], max(pts, key=lambda x: x[1])[0], label))
    return [plot_score_vs_alpha(curves, out_dir / "score_vs_alpha.png"),
            plot_continuum(best_alpha, out_dir / "continuum.png")]
