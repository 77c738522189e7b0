"""Scorers on the real benchmark files (gold answers pass, shuffled answers fail) and extraction cases."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from alphasweep.evaluation.benchmarks import load_benchmark
from alphasweep.evaluation.scorers import (
    SCORERS,
    choice_correct,
    exact_correct,
    extract_boxed,
    extract_choice,
    extract_exact,
    extract_math,
    math_correct,
)

BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
FILES = ["gsm8k", "math500", "aime24", "amc23"]

PHRASINGS = [
    lambda x: f"Adding these up step by step, so the answer is $\\boxed{{{x}}}$.",
    lambda x: f"First we compute the parts.\nThen we combine them.\n#### {x}",
    lambda x: f"Putting it together. The answer is {x}.",
]


def _golds(name: str) -> list[str]:
    path = BENCHMARKS / name / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared benchmark files sit beside the checkout)")
    return [item.gold for item in load_benchmark({"name": name, "path": str(path)}).items]


@pytest.mark.parametrize("name", FILES)
def test_gold_answers_are_correct(name):
    golds = _golds(name)
    rows = len([line for line in (BENCHMARKS / name / "test.jsonl").read_text().splitlines() if line.strip()])
    assert len(golds) == rows  # every row
    for k, phrase in enumerate(PHRASINGS):
        wrong = [g for g in golds if not math_correct(phrase(g), g)]
        assert len(wrong) <= 0.01 * len(golds), f"{name}, phrasing {k}: {len(wrong)} golds marked wrong: {wrong[:10]}"


@pytest.mark.parametrize("name", FILES)
def test_shuffled_answers_are_wrong(name):
    golds = _golds(name)
    rng = random.Random(1234)
    perm = list(range(len(golds)))
    while True:  # a derangement: no row keeps its own answer
        rng.shuffle(perm)
        if all(i != j for i, j in enumerate(perm)):
            break
    accepted = [(golds[j], golds[i]) for i, j in enumerate(perm) if math_correct(PHRASINGS[0](golds[j]), golds[i])]
    # Two rows may share a gold answer (gsm8k has many "5"s); those are right, not scorer errors.
    assert len(accepted) <= 0.02 * len(golds), f"{name}: shuffled answers accepted: {accepted[:10]}"
    assert all(_same_value(a, b) for a, b in accepted), accepted


def _same_value(a: str, b: str) -> bool:
    try:
        return float(a.replace(",", "")) == float(b.replace(",", ""))
    except ValueError:
        return a.replace(" ", "") == b.replace(" ", "")


def test_benchmark_files_render_prompts():
    for name in FILES:
        path = BENCHMARKS / name / "test.jsonl"
        if not path.is_file():
            pytest.skip(f"{path} is absent")
        bench = load_benchmark({"name": name, "path": str(path)}, limit=3)
        assert bench.scorer == "math" and len(bench.items) == 3
        assert "\\boxed{}" in bench.items[0].message
    gsm = load_benchmark({"name": "gsm8k", "path": str(BENCHMARKS / "gsm8k" / "test.jsonl")}, limit=1)
    assert gsm.items[0].gold == "18"
    amc = load_benchmark({"name": "amc23", "path": str(BENCHMARKS / "amc23" / "test.jsonl")}, limit=1)
    assert amc.items[0].gold == "27"


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, expected", [
    ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("\\boxed{a{b}c} and finally \\boxed{x^{2}+\\sqrt{y_{1}}}", "x^{2}+\\sqrt{y_{1}}"),
    ("the set is \\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("answer: \\boxed 5.", "5"),
    ("\\boxed{unbalanced and \\boxed{7}", "7"),
    ("\\fbox{12}", "12"),
    ("no box here", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("work\n#### 1,234\n", "1,234"),
    ("#### 5 then #### 7", "7"),
    ("So the answer is 42.", "42"),
    ("The answer is $3.5$. Done", "3.5"),
    ("The answer is: 10", "10"),
    ("the ANSWER IS x = 5", "x = 5"),
    ("\\boxed{3} wins over the answer is 4", "3"),
    ("just 5", None),
    ("", None),
])
def test_extract_math(text, expected):
    assert extract_math(text) == expected


@pytest.mark.parametrize("completion, gold, ok", [
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("\\boxed{\\dfrac{14}{3}}", "\\frac{14}{3}", True),
    ("#### 1,000", "1000", True),
    ("The answer is $x=5$.", "5", True),
    ("The answer is 27.", 27.0, True),
    ("\\boxed{025}", "25", True),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3, \\frac{\\pi}{2})", True),
    ("\\boxed{6}", "5", False),
    ("\\boxed{\\frac{1}{3}}", "0.33", False),
    ("I don't know", "5", False),
    ("\\boxed{}", "5", False),
    ("\\boxed{\\frac{", "5", False),
])
def test_math_correct(completion, gold, ok):
    assert math_correct(completion, gold) is ok


def test_math_correct_off_the_main_thread():
    """math-verify's signal timeouts only work in the main thread; elsewhere they are switched off."""
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_correct, "\\boxed{\\frac{2}{4}}", "1/2").result() is True
        assert pool.submit(math_correct, "\\boxed{3}", "1/2").result() is False


@pytest.mark.parametrize("text, letter", [
    ("(C)", "C"),
    ("Answer: C", "C"),
    ("The answer is (B).", "B"),
    ("After weighing the options, the correct option is D.", "D"),
    ("Answer: **E**", "E"),
    ("\\boxed{A}", "A"),
    ("So the final answer is $\\boxed{B. Acute pancreatitis}$", "B"),
    ("\\boxed{\\text{D}}", "D"),
    ("\\boxed{Aspirin}", None),
    ("C. Because it is", "C"),
    ("B", "B"),
    ("I think the answer is a number", None),
    ("I am not sure", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_choice_correct():
    assert choice_correct("The answer is (C).", "C")
    assert choice_correct("Answer: c is wrong, Answer: C", "(C)")
    assert not choice_correct("The answer is (B).", "C")
    assert not choice_correct("", "C")


def test_exact():
    assert extract_exact("  Hello \n  World. ") == "hello world"
    assert exact_correct("  Hello   World. ", "hello world")
    assert exact_correct("46", "46")
    assert exact_correct("46\n12+3=", "46")  # judged on the answer line
    assert not exact_correct("4", "46")
    assert not exact_correct("466", "46")
    assert not exact_correct("", "46")
    assert set(SCORERS) == {"math", "choice", "exact", "exact_similarity"}
