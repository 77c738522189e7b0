"""Synthetic tasks for tests and the embedded demo: problems a tiny model can learn in seconds.

The demo's base model is pretrained on `addition`, `recode-mixed` and `copy` (4 digits repeated: it gives NLL a
path from the input digits to the output that the letters of `cipher` reuse; without it NLL learnt the
letters 3x slower on one numeric path), and fine-tuned on three domains:

- `addition` (model-strong): the base knows it;
- `recode` (intermediate): 4 digits written in a digit code. The base half knows it: in pretraining it saw
  every digit written in one of 4 codes at random (`recode-mixed`), so it gives the right digit about 1/4;
- `cipher` (model-weak): sums without a carry answered in letters, which the base has never produced.

Benchmark rows are drawn first and excluded from every training set, so scores are on held-out problems.
Why these tasks: docs/continuum-setting.md.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

_LETTERS = str.maketrans("0123456789", "kqbzfmhtwr")  # the cipher's alphabet: one letter per digit
# The recode codes: code j writes digit d as _CODE[(d + j) % 10], so for every digit the codes differ.
_CODE = "3819264075"
_CODES = [str.maketrans("0123456789", "".join(_CODE[(d + j) % 10] for d in range(10))) for j in range(4)]


def _digits(rng: random.Random, n: int = 4) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _addition(rng: random.Random) -> tuple[str, str]:
    """The sum written backwards (least significant digit first): each digit then depends only on digits
    the model has already read or written, so a tiny model learns it in a few hundred steps."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a}+{b}=", str(a + b)[::-1]


def _recode(rng: random.Random) -> tuple[str, str]:
    digits = _digits(rng)
    return f"@{digits}>", digits.translate(_CODES[0])


def _recode_mixed(rng: random.Random) -> tuple[str, str]:
    digits = _digits(rng)
    return f"@{digits}>", "".join(d.translate(_CODES[rng.randrange(len(_CODES))]) for d in digits)


def _copy(rng: random.Random) -> tuple[str, str]:
    digits = _digits(rng)
    return f"#{digits}>", digits


def _cipher(rng: random.Random) -> tuple[str, str]:
    """A sum the base can do, answered in letters, which it has never written: after `=` it is all but sure
    of a digit (a letter at p ~ 1e-12), so `p`-like objectives get no gradient to start from. Only sums
    without a carry: each letter then stands for one column (a carried letter-sum stalls NLL as well)."""
    while True:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if a % 10 + b % 10 < 10 and a // 10 + b // 10 < 10:
            return f"{a}+{b}=", str(a + b)[::-1].translate(_LETTERS)


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "addition": _addition, "recode": _recode, "recode-mixed": _recode_mixed, "copy": _copy, "cipher": _cipher}


def _wrong_answer(answer: str, rng: random.Random) -> str:
    """A plausible-looking but wrong answer of the same length (a corrupted demonstration)."""
    while True:
        wrong = "".join(rng.choice("0123456789") for _ in answer)
        if wrong != answer and (len(wrong) == 1 or wrong[-1] != "0"):  # sums are written backwards
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


def benchmark_problems(task: str, n: int) -> list[tuple[str, str]]:
    """A task's benchmark: the same `n` problems whatever the data seed (a seed redraws the training rows and
    their noise, as a new sample of demonstrations would, not the benchmark), so one base model, which has
    them held out, serves every seed."""
    return problems(task, n, seed=10_000)


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
    test = benchmark_problems(task, n_test)
    train = corrupt(problems(task, n_train, seed=seed, exclude=[p for p, _ in test]), noise, seed)
    return (
        write_jsonl(out_dir / "train.jsonl", ({"prompt": p, "completion": a} for p, a in train)),
        write_jsonl(out_dir / "test.jsonl", ({"prompt": p, "answer": a} for p, a in test)),
    )
