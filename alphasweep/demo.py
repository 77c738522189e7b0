"""The embedded default: build the demo's tiny base and synthetic data, then point the config at them.

Paths written `demo:NAME` in the config resolve into the cache: `demo:base` is the pretrained tiny
base model, `demo:TASK/train.jsonl` and `demo:TASK/test.jsonl` the task's files. The base is cached by
the hash of its recipe (tinykit), so only the first run pays for pretraining.
"""

from __future__ import annotations

import os
from pathlib import Path

from alphasweep.config import DEMO_PREFIX, SweepConfig
from alphasweep.synthetic import problems, write_task_files
from alphasweep.tinykit import build_base


def cache_dir(cfg: SweepConfig) -> Path:
    root = cfg.demo.cache_dir or os.environ.get("ALPHASWEEP_CACHE") or "~/.cache/alphasweep"
    return Path(root).expanduser().resolve()


def prepare_demo(cfg: SweepConfig, *, rebuild: bool = False, log=print) -> SweepConfig:
    """Build what the `demo` section describes and return the config with `demo:` paths resolved."""
    root, demo = cache_dir(cfg), cfg.demo
    files = {}
    for task, t in demo.tasks.items():
        folder = root / "data" / f"{task}-n{t.n_train}-t{t.n_test}-noise{t.noise:g}-s{t.seed}"
        if rebuild or not (folder / "test.jsonl").exists():
            write_task_files(task, folder, n_train=t.n_train, n_test=t.n_test, noise=t.noise, seed=t.seed)
        files[task] = folder
    held_out = {task: [p for p, _ in problems(task, demo.tasks[task].n_test, seed=10_000 + demo.tasks[task].seed)]
                for task in demo.base.pretrain_tasks if task in demo.tasks}
    log(f"demo: tiny base model in {root} (pretraining {demo.base.steps} steps on "
        f"{', '.join(demo.base.pretrain_tasks) or 'nothing'} unless cached)")
    base = build_base(root / "models", **demo.base.model_dump(), exclude=held_out, rebuild=rebuild)

    def resolve(path: str) -> str:
        if not path.startswith(DEMO_PREFIX):
            return path
        name = path[len(DEMO_PREFIX):]
        if name == "base":
            return str(base)
        task, _, file = name.partition("/")
        if task not in files:
            raise ValueError(f"{path}: no task {task!r} in the config's demo.tasks ({', '.join(files)})")
        return str(files[task] / file)

    raw = cfg.model_dump()
    for m in raw["models"]:
        m["path"] = resolve(m["path"])
    for d in raw["domains"]:
        d["train"]["path"] = resolve(d["train"]["path"])
        for b in d["benchmarks"]:
            b["path"] = resolve(b["path"]) if b["path"] else None
    return SweepConfig.model_validate(raw)
