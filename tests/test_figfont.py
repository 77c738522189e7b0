"""`alphasweep data figfont`: the paper's figlet-font puzzles built offline with reasoning-gym."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import reasoning_gym
from transformers import AutoTokenizer

from alphasweep.config import DataSpec
from alphasweep.data import load_sft_data
from alphasweep.evaluation.benchmarks import load_benchmark
from alphasweep.evaluation.scorers import METRICS
from alphasweep.figfont import PAPER_SEED, TASK, write_figfont


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_files_other_seed_other_puzzles(tmp_path):
    a = write_figfont(tmp_path / "a", n_train=40, n_test=12, seed=3)
    b = write_figfont(tmp_path / "b", n_train=40, n_test=12, seed=3)
    c = write_figfont(tmp_path / "c", n_train=40, n_test=12, seed=4)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert _rows(a[0]) != _rows(c[0])
    assert [len(_rows(p)) for p in a] == [40, 12]


def test_train_is_the_papers_items_and_test_shares_no_puzzle(tmp_path):
    train_path, test_path = write_figfont(tmp_path, n_train=300, n_test=100)
    train, test = _rows(train_path), _rows(test_path)
    paper = reasoning_gym.create_dataset("figlet_font", size=10, seed=PAPER_SEED, **TASK)  # as the paper called it
    assert [r["extra_info"]["question"] for r in train] == [paper[i]["question"] for i in range(300)]
    assert all(r["answer"] == r["extra_info"]["answer"] == paper[i]["answer"] for i, r in enumerate(train))
    train_questions = {r["extra_info"]["question"] for r in train}
    test_questions = [r["extra_info"]["question"] for r in test]
    assert not train_questions & set(test_questions) and len(set(test_questions)) == len(test_questions) == 100
    assert test[0]["extra_info"]["index"] >= 300


def test_gold_answers_score_one_on_both_metrics(tmp_path):
    _, test_path = write_figfont(tmp_path, n_train=20, n_test=30, seed=7)
    bench = load_benchmark({"name": "figfont", "path": str(tmp_path)})  # the folder's test.jsonl
    assert len(bench.items) == 30 and bench.scorer == "exact_similarity"
    assert [it.message for it in bench.items] == [r["extra_info"]["question"] for r in _rows(test_path)]
    for metric in METRICS["exact_similarity"].values():
        assert all(float(metric(it.gold, it.gold)) == 1.0 for it in bench.items)
        assert all(float(metric(bench.items[i - 1].gold, it.gold)) < 1.0 for i, it in enumerate(bench.items)
                   if bench.items[i - 1].gold != it.gold)


def test_the_presets_training_fields_read_the_files(tmp_path, tiny_model):
    train_path, _ = write_figfont(tmp_path, n_train=12, n_test=4)
    template = "<|im_start|>user\n{prompt}\n<|im_end|>\n<|im_start|>assistant\n"
    spec = DataSpec(path=str(train_path), prompt_field="extra_info.question", completion_field="answer",
                    prompt_template=template, heldout=0)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    data = load_sft_data(spec, tok, max_length=4096, seed=0)
    row = _rows(train_path)[0]
    wanted = tok(template.format(prompt=row["extra_info"]["question"]))["input_ids"]
    completion = tok(row["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    example = next(e for e in data.train if e.input_ids == wanted + completion)
    assert example.loss_mask == [False] * len(wanted) + [True] * len(completion)
    assert len(data.train) == 12 and data.stats["truncated"] == 0


def test_cli_writes_the_files(tmp_path):
    out = tmp_path / "ff"
    proc = subprocess.run([sys.executable, "-m", "alphasweep.cli", "data", "figfont", str(out), "--n-train", "5",
                           "--n-test", "3", "--seed", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 5 training puzzles" in proc.stdout
    assert [len(_rows(out / f)) for f in ("train.jsonl", "test.jsonl")] == [5, 3]
    bad = subprocess.run([sys.executable, "-m", "alphasweep.cli", "data", "figfont", str(out), "--n-test", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--n-test" in bad.stderr


@pytest.mark.parametrize("n_train, n_test", [(0, 5), (5, 0)])
def test_sizes_below_one_are_refused(tmp_path, n_train, n_test):
    with pytest.raises(ValueError, match="at least one training and one test puzzle"):
        write_figfont(tmp_path, n_train=n_train, n_test=n_test)
