"""Every figure alphasweep draws: W(p) of objectives, benchmark score against alpha, the continuum.

One way of making figures: a bare matplotlib `Figure` saved to a PNG, with no pyplot and no backend
switch, so drawing never touches global state (trials' callbacks draw from the sweep driver's threads).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from alphasweep.objectives.registry import Objective, parse_objective

ALPHA_LINTHRESH = 0.1  # the alpha axis is linear within +-0.1 (NLL at 0, negative alphas) and log beyond


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_weights(objectives: Iterable[Objective | str], path: str | Path, *, points: int = 400,
                 y_max: float = 2.0) -> Path:
    """W(p) over p in (0, 1] for each objective, to compare how they weigh tokens."""
    p = np.linspace(1.0 / points, 1.0, points)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for objective in objectives:
        objective = parse_objective(objective) if isinstance(objective, str) else objective
        ax.plot(p, objective.weight(p), label=objective.name)
    ax.set(xlabel="p (target-token probability)", ylabel="W(p) = -p f'(p)", xlim=(0, 1), ylim=(0, y_max))
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_score_vs_alpha(curves: dict[str, list[tuple[float, float]]], path: str | Path) -> Path:
    """One line per pair: benchmark accuracy against the objectives' place on the alpha axis."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    for label, pts in curves.items():
        if pts:
            ax.plot([a for a, _ in pts], [v for _, v in pts], "o-", label=label)
    ax.set_xscale("symlog", linthresh=ALPHA_LINTHRESH)
    ax.set(xlabel="alpha (0 = NLL, 1 = p)", ylabel="benchmark accuracy", title="score vs alpha per pair")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_continuum(best_alpha: list[tuple[float, float, str]], path: str | Path) -> Path:
    """Each pair's best alpha against its probe's mean target probability: `(mean_p, alpha, label)` points."""
    fig = Figure(figsize=(5.2, 4.0))
    ax = fig.subplots()
    for mean_p, alpha, label in best_alpha:
        ax.scatter(mean_p, alpha)
        ax.annotate(label, (mean_p, alpha), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_yscale("symlog", linthresh=ALPHA_LINTHRESH)
    ax.set(xlabel="probe: mean target probability of the base model", ylabel="best alpha",
           title="capability continuum")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_objective_scores(scores: dict[str, float], path: str | Path, *, title: str = "") -> Path:
    """One pair's objectives: score against the place on the alpha axis, each point labelled with its
    objective. Objectives without a cut (NLL, GeneralFamily, p) are joined in alpha order; cut objectives sit
    at their loss's alpha as open diamonds."""
    points = sorted(((parse_objective(name), score) for name, score in scores.items()),
                    key=lambda p: (p[0].effective_alpha, p[1]))
    fig = Figure(figsize=(7.0, 4.4))
    ax = fig.subplots()
    plain = [(o.effective_alpha, s) for o, s in points if o.spec.side is None]
    cut = [(o.effective_alpha, s) for o, s in points if o.spec.side is not None]
    if plain:
        ax.plot(*zip(*plain, strict=True), "o-", color="tab:blue", label="no cut (NLL, GeneralFamily, p)")
    if cut:
        ax.plot(*zip(*cut, strict=True), "D", mfc="none", color="tab:orange", linestyle="none",
                label="with a cut (at its loss's alpha)")
    for i, (obj, score) in enumerate(points):
        ax.annotate(obj.name, (obj.effective_alpha, score), fontsize=8, xytext=(5, 4 - 10 * (i % 2)),
                    textcoords="offset points")
    ax.set_xscale("symlog", linthresh=ALPHA_LINTHRESH)
    ax.set(xlabel="alpha: W(p) = p^alpha (0 = NLL, 1 = p)", ylabel="score (mean benchmark accuracy)",
           title=title or "score per objective")
    ax.margins(x=0.15, y=0.12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)
