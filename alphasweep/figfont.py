"""The paper's model-weak domain, built offline: figlet-font puzzles from reasoning-gym.

Li et al. (arXiv 2510.00526) generated it with reasoning-gym's `figlet_font` task (seed 42, words of 2 to
5 letters, spaced letters): items 0 to 39,999 for training, 40,000 to 44,999 for the test, published as
`gaotang/figlet_font`. A reasoning-gym item depends only on the seed plus its index, so `write_figfont`
with the defaults writes the same training rows. Its test rows are the next items that are neither a
training puzzle nor a repeat (13 of the paper's 5,000 test puzzles are also training puzzles).

Rows keep the hub dataset's fields that `configs/paper/figfont.yaml` reads: the puzzle in
`extra_info.question`, the word in `answer`.
"""

from __future__ import annotations

import json
from pathlib import Path

import reasoning_gym

__all__ = ["PAPER_SEED", "TASK", "write_figfont"]

PAPER_SEED = 42
TASK = {"min_word_len": 2, "max_word_len": 5, "space_letters": True}  # the paper's reasoning-gym settings


def _row(item: dict, split: str, index: int) -> dict:
    return {
        "answer": item["answer"],
        "extra_info": {"split": split, "index": index, "question": item["question"], "answer": item["answer"],
                       "font": item["metadata"]["font"]},
    }


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_figfont(out_dir: str | Path, n_train: int = 40_000, n_test: int = 5_000,
                  seed: int = PAPER_SEED) -> tuple[Path, Path]:
    """Write `out_dir/train.jsonl` (items 0 .. n_train-1) and `out_dir/test.jsonl` (the next n_test distinct
    puzzles that are not training puzzles); returns both paths."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"figfont: need at least one training and one test puzzle, got {n_train} and {n_test}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    dataset = reasoning_gym.create_dataset("figlet_font", size=n_train + n_test, seed=seed, **TASK)
    train = [_row(dataset[i], "train", i) for i in range(n_train)]
    seen = {row["extra_info"]["question"] for row in train}
    test: list[dict] = []
    index, last = n_train, n_train + 10 * n_test + 1000  # items past `size` are drawn the same way
    while len(test) < n_test:
        if index > last:
            raise ValueError(f"figfont: found only {len(test)} test puzzles distinct from the training ones")
        item = dataset[index]
        if item["question"] not in seen:
            seen.add(item["question"])
            test.append(_row(item, "test", index))
        index += 1
    train_path, test_path = out / "train.jsonl", out / "test.jsonl"
    _write(train_path, train)
    _write(test_path, test)
    return train_path, test_path
