"""`alphasweep eval`: score one checkpoint in this process (no Ray needed) and print a table."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alphasweep.config import BenchmarkSpec, EvalConfig
from alphasweep.evaluation.actor import Evaluator, _stderr
from alphasweep.table import text_table

__all__ = ["format_table", "run_eval", "write_records"]


def run_eval(checkpoint: str, benchmarks: list[BenchmarkSpec | dict | str], *, limit: int | None = None,
             backend: str | None = None, max_new_tokens: int | None = None, out_path: str | Path | None = None,
             eval_cfg: EvalConfig | dict | None = None, log: Callable[[str], None] | None = _stderr) -> dict[str, Any]:
    """Evaluate `checkpoint` on `benchmarks` (names like `gsm8k`, `NAME=PATH`, paths, specs or dicts).

    `backend` and `max_new_tokens` override `eval_cfg`'s. Writes the per-sample records as JSON Lines
    to `out_path` when given; returns `Evaluator.evaluate`'s dict (give it to `format_table`).
    """
    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.model_validate(eval_cfg or {})
    overrides = {k: v for k, v in (("backend", backend), ("max_new_tokens", max_new_tokens)) if v is not None}
    if overrides:
        cfg = cfg.model_copy(update=overrides)
        EvalConfig.model_validate(cfg.model_dump())  # same checks as a config file
    evaluator = Evaluator(cfg, log=log)
    try:
        result = evaluator.evaluate(checkpoint, benchmarks, limit=limit)
    finally:
        evaluator.close()
    if out_path is not None:
        write_records(result["records"], out_path)
    return result


def write_records(records: list[dict], out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return out_path


def format_table(result: dict[str, Any]) -> str:
    """benchmark | n | accuracy (| pass@k when k > 1), then the mean, then every metric of a benchmark that
    reports several (its accuracy column is the metric it names); an error result prints its message."""
    if "error" in result:
        return f"error: {result['error']}"
    k = result.get("k", 1)
    names = list(result["scores"])
    header = ["benchmark", "n", "accuracy"] + ([f"pass@{k}"] if k > 1 else [])
    rows = [[name, str(result["n"][name]), f"{result['scores'][name]:.4f}"]
            + ([f"{result['pass_at_k'][name]:.4f}"] if k > 1 else []) for name in names]
    mean = (["mean", str(sum(result["n"].values())), f"{result['mean_score']:.4f}"]
            + ([f"{sum(result['pass_at_k'].values()) / len(names):.4f}"] if k > 1 else []))
    table = text_table(header, rows, right=range(1, len(header)), footer=mean)
    several = [f"{name}: " + ", ".join(f"{metric} {v:.4f}" for metric, v in values.items())
               for name, values in result.get("metrics", {}).items() if len(values) > 1]
    return "\n".join([table, *several]) + f"\n{result.get('backend', '')} backend, {result['seconds']:.1f}s"
