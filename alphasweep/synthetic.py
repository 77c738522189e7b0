"""Synthetic tasks for tests and the embedded demo: problems a tiny model can learn in seconds.

`addition` is the domain the demo's base model is pretrained on (model-strong); `cipher` is a 4-digit
substitution the base model has never seen (model-weak). Benchmark rows are drawn first and excluded
from every training set, so scores are on held-out problems.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

# A fixed digit permutation: the cipher maps each of 4 digits (reversing too made it unlearnable in a
# demo-sized fine-tune; see docs/continuum-setting.md).
_CIPHER = str.maketrans("0123456789", "7305918264")


def _addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a}+{b}=", str(a + b)


def _cipher(rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(4))
    return f"#{digits}>", digits.translate(_CIPHER)


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {"addition": _addition, "cipher": _cipher}


def _wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible-looking but wrong answer of the same length (a corrupted demonstration)."""
    while True:
        wrong = "".join(rng.choice("0123456789") for _ in answer)
        if wrong != answer and (len(wrong) == 1 or wrong[0] != "0"):
            return wrong


def problems(task: str, n: int, seed: int, exclude: Iterable[str] = ()) -> list[tuple[str, str]]:
    """`n` distinct (prompt, answer) pairs of `task`, none of whose prompts is in `exclude`."""
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")
    rng, seen, out = random.Random(f"{task}-{seed}"), set(exclude), []
    for _ in range(100 * n):
        prompt, answer = TASKS[task](rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer))
            if len(out) == n:
                return out
    raise ValueError(f"task {task!r} has fewer than {n} distinct problems outside the excluded set")


def corrupt(rows: list[tuple[str, str]], rate: float, seed: int) -> list[tuple[str, str]]:
    """Replace the answer of a `rate` share of rows with a wrong one (noisy demonstrations)."""
    rng = random.Random(f"noise-{seed}")
    return [(p, _wrong_answer(a, rng) if rng.random() < rate else a) for p, a in rows]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_task_files(
    task: str, out_dir: str | Path, *, n_train: int, n_test: int, noise: float = 0.0, seed: int = 0
) -> tuple[Path, Path]:
    """Write `train.jsonl` (prompt/completion, optionally noisy) and `test.jsonl` (prompt/answer)."""
    out_dir = Path(out_dir)
    test = problems(task, n_test, seed=10_000 + seed)
    train = corrupt(problems(task, n_train, seed=seed, exclude=[p for p, _ in test]), noise, seed)
    return (
        write_jsonl(out_dir / "train.jsonl", ({"prompt": p, "completion": a} for p, a in train)),
        write_jsonl(out_dir / "test.jsonl", ({"prompt": p, "answer": a} for p, a in test)),
    )
