"""Intervals and paired comparisons against published and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from alphasweep.stats import (
    Outcomes,
    bootstrap_mean,
    compare,
    over_seeds,
    paired_binary,
    paired_bootstrap,
    wilson,
)


@pytest.mark.parametrize("successes, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score without correction)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_newcombes_table(successes, n, low, high):
    ci = wilson(successes, n)
    assert (ci.low, ci.high) == pytest.approx((low, high), abs=5e-5)


def test_t_interval_over_seeds_matches_the_textbook_formula():
    s = over_seeds([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302653
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    half = 4.302653 / np.sqrt(3)
    assert (s.interval.low, s.interval.high) == pytest.approx((2 - half, 2 + half), abs=1e-5)
    one = over_seeds([0.4])
    assert one.mean == 0.4 and one.std == 0 and one.interval is None
    two = over_seeds([0.95, 0.99], bounds=(0, 1))  # t(0.975, 1) = 12.7: far past 1, cut at the bound
    # half width: t * std / sqrt(n) = 12.7062 * (0.02 * sqrt(2)) / sqrt(2)
    assert two.interval.high == 1 and two.interval.low == pytest.approx(0.97 - 12.7062 * 0.02, abs=1e-4)


def test_exact_mcnemar_p_values_and_the_matching_interval():
    def items(both, only_a, only_b, neither):
        a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
        b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
        return np.array(a, bool), np.array(b, bool)

    five_none = paired_binary(*items(100, 5, 0, 95))  # 2 * 0.5**5 = 0.0625: not enough evidence
    assert five_none.p_value == pytest.approx(0.0625) and not five_none.decided
    assert five_none.difference == pytest.approx(0.025)
    # Clopper-Pearson of 5/5: (0.025 ** (1/5), 1), mapped by d/n * (2 pi - 1) with d/n = 5/200
    assert five_none.interval.low == pytest.approx(5 / 200 * (2 * 0.025 ** (1 / 5) - 1), abs=1e-6)
    assert five_none.interval.high == pytest.approx(5 / 200)

    ten_two = paired_binary(*items(150, 10, 2, 38))  # 2 * (1 + 12 + 66) / 4096
    assert ten_two.p_value == pytest.approx(158 / 4096) and ten_two.decided
    assert ten_two.difference == pytest.approx(8 / 200) and ten_two.interval.low > 0

    agree = paired_binary(*items(120, 0, 0, 80))
    assert agree.difference == 0 and not agree.decided

    for only_a in range(0, 16):  # the interval excludes 0 exactly when the exact test rejects at 5%
        for only_b in range(0, 16):
            c = paired_binary(*items(50, only_a, only_b, 50))
            assert c.decided == (c.p_value < 0.05), (only_a, only_b, c)


def test_bootstrap_agrees_with_wilson_and_the_normal_interval_where_they_should():
    rng = np.random.default_rng(1)
    x = (rng.random(400) < 0.8).astype(float)
    boot, exact = bootstrap_mean(x), wilson(int(x.sum()), x.size)
    assert boot.low == pytest.approx(exact.low, abs=0.01) and boot.high == pytest.approx(exact.high, abs=0.01)
    y = rng.normal(3.0, 2.0, 2000)
    half = 1.96 * y.std(ddof=1) / np.sqrt(y.size)
    ci = bootstrap_mean(y)
    assert (ci.low, ci.high) == pytest.approx((y.mean() - half, y.mean() + half), abs=0.01)
    assert bootstrap_mean(y) == ci  # fixed random seed: the same report every time
    same = bootstrap_mean([0.5] * 10)
    assert (same.low, same.high) == (0.5, 0.5)


def test_paired_bootstrap_sees_a_gap_that_unpaired_intervals_miss():
    """Item difficulty dominates the scores; the pairing removes it, so a consistent +0.05 per item shows."""
    rng = np.random.default_rng(2)
    difficulty = rng.random(200)
    a, b = difficulty + 0.05, difficulty
    assert bootstrap_mean(a).low < bootstrap_mean(b).high  # alone, the intervals overlap
    c = paired_bootstrap(a, b)
    assert c.difference == pytest.approx(0.05) and c.decided


def test_outcomes_from_evaluator_records_score_like_the_evaluator():
    records = [{"benchmark": "big", "index": i, "sample": s, "correct": (i + s) % 3 == 0}
               for i in range(30) for s in range(2)]
    records += [{"benchmark": "small", "index": 7 + i, "sample": s, "correct": i < 4}
                for i in range(10) for s in range(2)]
    o = Outcomes.from_records(records, k=2)
    assert o.n == 40 and len(o.correct["small"]) == 10 and o.correct["small"][:5] == [2, 2, 2, 2, 0]
    big = sum((i + s) % 3 == 0 for i in range(30) for s in range(2)) / 60
    assert o.score() == pytest.approx((big + 0.4) / 2)  # the evaluator's mean_score: benchmarks count once
    assert o.values().mean() == pytest.approx(o.score())
    assert Outcomes.from_json(o.to_json()) == o
    assert not o.is_binary() and o.interval().method == "bootstrap"
    one = Outcomes(1, {"b": [1, 0, 1, 1]})
    assert one.is_binary() and one.interval() == wilson(3, 4)
    pooled = Outcomes.pooled([one, Outcomes(1, {"b": [1, 1, 0, 1]})])
    assert pooled == Outcomes(2, {"b": [2, 1, 1, 2]}) and pooled.score() == pytest.approx(0.75)
    # every sample of every item wrong: nothing for a bootstrap to resample, Wilson's over the n items instead
    assert Outcomes(3, {"b": [0] * 40}).interval() == wilson(0, 40)
    with pytest.raises(ValueError, match="same items"):
        Outcomes.pooled([one, Outcomes(1, {"b": [1]})])


def test_compare_over_seeds_is_decided_only_when_items_and_seeds_agree():
    rng = np.random.default_rng(3)

    def run(p):
        return Outcomes(1, {"b": (rng.random(300) < p).astype(int).tolist()})

    steady = compare([run(0.8) for _ in range(3)], [run(0.5) for _ in range(3)])
    assert steady.decided and steady.interval.method.endswith("t over 3 seeds")
    assert steady.difference == pytest.approx(0.3, abs=0.06)
    # seed 0 says a is far ahead, seed 1 says b is: pooled items still lean to a, the seeds do not agree
    swinging = compare([run(0.9), run(0.45)], [run(0.5), run(0.55)])
    items_only = paired_bootstrap(np.mean([r.values() for r in (run(0.9), run(0.45))], axis=0),
                                  np.mean([r.values() for r in (run(0.5), run(0.55))], axis=0))
    assert items_only.decided and not swinging.decided
    single = compare([run(0.8)], [run(0.5)])
    assert single.p_value is not None and single.interval.method == "exact McNemar"
    with pytest.raises(ValueError, match="same items"):
        compare([run(0.8)], [Outcomes(1, {"b": [1, 0]})])
