"""How sure a score is: intervals for one objective and paired comparisons of two, from per-item outcomes.

Torch-free (numpy, scipy, statsmodels), so the report, the bench and the tests read it without a model.

- One scored run (one trained checkpoint) is an `Outcomes`: for each benchmark, how many of the `k`
  samples of each item were correct. Its score is the mean over benchmarks of avg@k, as the evaluator's
  `mean_score`. Its interval is Wilson's for one benchmark scored once per item (a proportion over n
  items), else a bootstrap over items.
- Two objectives of one pair are scored on the same items, so they are compared item by item. With 0/1
  items (one benchmark, one sample, one seed) the exact McNemar test decides, and the interval of the
  difference is its conditional counterpart (Clopper-Pearson on the discordant items), so the interval
  excludes 0 exactly when the test rejects at the same level. Otherwise a paired bootstrap over items.
- Over several seeds both the spread between training runs and the items matter: an objective's interval
  is the envelope of the t interval over seeds and the interval over items of its runs pooled; a comparison
  is decided only when the paired interval over items and the t interval of the per-seed differences both
  exclude 0 (the reported interval is their envelope).

Bootstraps use a fixed random seed, so a report reads the same every time it is built. scipy and statsmodels
are imported where an interval is computed: they take seconds to import, and every trial process imports
this module only to record its `Outcomes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 4999
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str

    def excludes(self, value: float = 0.0) -> bool:
        return not self.low <= value <= self.high

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def wilson(successes: int, n: int, level: float = LEVEL) -> Interval:
    """Wilson score interval for a proportion (accuracy over n items scored once each)."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        raise ValueError(f"wilson: need at least one item, got n={n}")
    low, high = proportion_confint(successes, n, alpha=1 - level, method="wilson")
    return Interval(float(low), float(high), "wilson")


def bootstrap_mean(values: Sequence[float], level: float = LEVEL) -> Interval:
    """BCa bootstrap interval of a mean over items (avg@k, several benchmarks, paired differences)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap: need at least one item")
    if np.ptp(x) == 0:  # every item the same: no resample differs (scipy's BCa would return nan)
        return Interval(float(x[0]), float(x[0]), "bootstrap")
    res = stats.bootstrap((x,), np.mean, n_resamples=RESAMPLES, confidence_level=level, method="BCa",
                          vectorized=True, rng=np.random.default_rng(BOOTSTRAP_SEED))
    return Interval(float(res.confidence_interval.low), float(res.confidence_interval.high), "bootstrap")


@dataclass(frozen=True)
class SeedSummary:
    """A figure over training seeds: mean, spread (sample std) and a t interval (None for one seed)."""

    mean: float
    std: float
    n: int
    interval: Interval | None


def over_seeds(values: Sequence[float], level: float = LEVEL,
               bounds: tuple[float, float] = (-np.inf, np.inf)) -> SeedSummary:
    """The t interval cut to `bounds`, the values a figure can take (an accuracy lies in [0, 1]): with few
    seeds it reaches far past them (t(0.975, 1) = 12.7), and the truth lies inside."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("over_seeds: need at least one value")
    if x.size == 1:
        return SeedSummary(float(x[0]), 0.0, 1, None)
    std = float(x.std(ddof=1))
    low, high = (x[0], x[0]) if std == 0 else stats.ttest_1samp(x, 0.0).confidence_interval(level)
    interval = Interval(float(max(low, bounds[0])), float(min(high, bounds[1])), "t over seeds")
    return SeedSummary(float(x.mean()), std, int(x.size), interval)


@dataclass(frozen=True)
class Comparison:
    """`a - b` on the same items: the difference, its interval, and whether the interval excludes 0."""

    difference: float
    interval: Interval
    p_value: float | None = None  # the exact McNemar test's, where it applies

    @property
    def decided(self) -> bool:
        return self.interval.excludes(0.0)


def paired_binary(a: Sequence[bool], b: Sequence[bool], level: float = LEVEL) -> Comparison:
    """Two 0/1 scorings of the same items: the exact McNemar test and its matching interval.

    Only the discordant items carry evidence: given d of them, the number where `a` alone is right is
    Binomial(d, pi), and `a - b` = d/n * (2 pi - 1). The Clopper-Pearson interval of pi, mapped through
    that line, excludes 0 exactly when the two-sided exact McNemar test rejects pi = 1/2.
    """
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import proportion_confint

    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired_binary: need two equal, non-empty sets of items, got {x.size} and {y.size}")
    only_a, only_b, n = int((x & ~y).sum()), int((~x & y).sum()), x.size
    discordant = only_a + only_b
    difference = (only_a - only_b) / n
    if discordant == 0:
        return Comparison(0.0, Interval(0.0, 0.0, "exact McNemar"), 1.0)
    low, high = proportion_confint(only_a, discordant, alpha=1 - level, method="beta")
    scale = discordant / n
    table = [[int((x & y).sum()), only_a], [only_b, int((~x & ~y).sum())]]
    return Comparison(difference, Interval(scale * (2 * low - 1), scale * (2 * high - 1), "exact McNemar"),
                      float(mcnemar(table, exact=True).pvalue))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Comparison:
    """Two scorings of the same items with per-item values (avg@k, weights, means over seeds)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired_bootstrap: need two equal, non-empty sets of items, got {x.size} and {y.size}")
    diff = x - y
    interval = bootstrap_mean(diff, level)
    return Comparison(float(diff.mean()), Interval(interval.low, interval.high, "paired bootstrap"))


@dataclass(frozen=True)
class Outcomes:
    """One scored run: per benchmark, the number of correct samples (0..k) of each item, in item order."""

    k: int
    correct: dict[str, list[int]]

    @classmethod
    def from_records(cls, records: Iterable[dict], k: int) -> Outcomes:
        """From the evaluator's per-completion records (benchmark, index, sample, correct)."""
        counts: dict[str, dict[int, int]] = {}
        for r in records:
            items = counts.setdefault(r["benchmark"], {})
            items[r["index"]] = items.get(r["index"], 0) + bool(r["correct"])
        return cls(k, {bench: list(items.values()) for bench, items in counts.items()})

    @classmethod
    def from_json(cls, data: dict) -> Outcomes:
        return cls(int(data["k"]), {b: [int(c) for c in v] for b, v in data["correct"].items()})

    def to_json(self) -> dict:
        """Compact enough for an Optuna user attribute: one small integer per item."""
        return {"k": self.k, "correct": self.correct}

    @property
    def n(self) -> int:
        return sum(len(v) for v in self.correct.values())

    def score(self) -> float:
        return float(np.mean([np.mean(v) / self.k for v in self.correct.values()]))

    def values(self) -> np.ndarray:
        """Per-item values whose plain mean is `score()`: avg@k, weighted so each benchmark counts once."""
        total, benches = self.n, len(self.correct)
        return np.concatenate([np.asarray(v, dtype=float) / self.k * total / (benches * len(v))
                               for v in self.correct.values()])

    def is_binary(self) -> bool:
        """One benchmark scored once per item: accuracy is a proportion over n items."""
        return self.k == 1 and len(self.correct) == 1

    def interval(self, level: float = LEVEL) -> Interval:
        """Wilson's for a proportion over n items, else a bootstrap over items; where every sample of every
        item was wrong (or right) there is nothing to resample, and Wilson's over the n items stands in."""
        score = self.score()
        if self.is_binary() or (np.ptp(self.values()) == 0 and score in (0.0, 1.0)):
            return wilson(round(score * self.n), self.n, level)
        return bootstrap_mean(self.values(), level)

    @classmethod
    def pooled(cls, runs: Sequence[Outcomes]) -> Outcomes:
        """Several runs scored on the same items as one: each item's correct samples over all of them."""
        first = runs[0]
        if not all(r.same_items(first) for r in runs):
            raise ValueError("pooled: the runs were not scored on the same items")
        return cls(first.k * len(runs), {b: [sum(c) for c in zip(*(r.correct[b] for r in runs), strict=True)]
                                        for b in first.correct})

    def same_items(self, other: Outcomes) -> bool:
        return self.k == other.k and {b: len(v) for b, v in self.correct.items()} == {
            b: len(v) for b, v in other.correct.items()}


def compare(a: Sequence[Outcomes], b: Sequence[Outcomes], level: float = LEVEL) -> Comparison:
    """`a - b` from runs paired by seed (a[i] and b[i] trained with the same seed, scored on the same items).

    One seed: exact McNemar on 0/1 items, else a paired bootstrap over items. Several seeds: the paired
    bootstrap over items of the per-item means over seeds, and a t interval over seeds of the per-seed
    differences; decided only when both exclude 0, so the interval reported is their envelope.
    """
    if not a or len(a) != len(b):
        raise ValueError(f"compare: need runs paired by seed, got {len(a)} and {len(b)}")
    if not all(x.same_items(y) for x, y in zip(a, b, strict=True)):
        raise ValueError("compare: the runs were not scored on the same items")
    if len(a) == 1 and a[0].is_binary():
        (x,), (y,) = a[0].correct.values(), b[0].correct.values()
        return paired_binary(np.asarray(x) > 0, np.asarray(y) > 0, level)
    items = paired_bootstrap(np.mean([r.values() for r in a], axis=0), np.mean([r.values() for r in b], axis=0),
                             level)
    if len(a) == 1:
        return items
    seeds = over_seeds([x.score() - y.score() for x, y in zip(a, b, strict=True)], level, bounds=(-1, 1)).interval
    envelope = Interval(min(items.interval.low, seeds.low), max(items.interval.high, seeds.high),
                        f"paired bootstrap over items and t over {len(a)} seeds")
    return Comparison(items.difference, envelope)
