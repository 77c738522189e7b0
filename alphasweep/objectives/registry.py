"""The objective registry: every SFT objective family of Li et al. (arXiv 2510.00526), and all that is
known about it without computing a loss. torch-free, so that validating a config never imports torch.

Every objective is a per-token loss f(p) of the target token's probability p. Its logit gradient is
-W(p) * (onehot - softmax) with the weight W(p) = -p f'(p), which is what sets objectives apart: NLL
weighs every token equally, `p` (alpha = 1) weighs tokens by how plausible the model already finds them.

| name (`parse_objective`) | family                 | parameter | per-token loss        | W(p)       | alpha axis |
| ------------------------- | ---------------------- | --------- | --------------------- | ---------- | ---------- |
| `original`, `nll`, `logp` | `nll`                  | -         | -log p                | 1          | 0          |
| `p`                       | `p`                    | -         | 1 - p                 | p          | 1          |
| `dft`                     | `dft`                  | -         | -sg(p) log p          | p          | 1          |
| `GeneralFamily-a`         | `general`              | alpha     | (1 - p^a) / a         | p^a        | a          |
| `OnlyTopP-q`              | `top_p`                | threshold | 1 - p,  if p >= q     | p [p >= q] | 1          |
| `OnlyBottomP-q`           | `bottom_p`             | threshold | 1 - p,  if p < q      | p [p < q]  | 1          |
| `OnlyTopLogP-q`           | `top_logp`             | threshold | -log p, if p >= q     | [p >= q]   | 0          |
| `OnlyBottomLogP-q`        | `bottom_logp`          | threshold | -log p, if p < q      | [p < q]    | 0          |
| `TopQuantileP-r`          | `top_quantile_p`       | quantile  | 1 - p,  if p >= cut_r | p          | 1          |
| `BottomQuantileP-r`       | `bottom_quantile_p`    | quantile  | 1 - p,  if p < cut_r  | p          | 1          |
| `TopQuantileLogP-r`       | `top_quantile_logp`    | quantile  | -log p, if p >= cut_r | 1          | 0          |
| `BottomQuantileLogP-r`    | `bottom_quantile_logp` | quantile  | -log p, if p < cut_r  | 1          | 0          |

sg is stop-gradient. Top keeps p >= cut and Bottom keeps p < cut, so a Top and a Bottom objective with the
same cut partition the tokens. cut_r is the r-quantile of the detached probabilities of the micro-batch's
masked tokens, so `TopQuantile*-r` trains on the top 1 - r share of them; their W(p) leaves the indicator
out, since the cut is only known per batch. The alpha axis places an objective by the exponent of its W(p)
(a cut family by its loss's), which is where the report plots it. Ranges: alpha in [-1, 16] with
|alpha| >= 1e-8 (closer to 0 the family is NLL to float32 precision: use `original`); q and r in (0, 1).
The search space (`search.alpha`, `search.threshold`; a quantile is searched as a threshold), the
config's range checks and the report all read these specs; nothing else names a family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

Param = Literal["alpha", "threshold", "quantile"]


@dataclass(frozen=True)
class ParamRange:
    """The values a family parameter may take: [low, high], or (low, high) when `open`."""

    low: float
    high: float
    open: bool

    def __contains__(self, x: float) -> bool:
        return self.low < x < self.high if self.open else self.low <= x <= self.high

    def __str__(self) -> str:
        left, right = "()" if self.open else "[]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


ALPHA_RANGE = ParamRange(-1.0, 16.0, open=False)
CUT_RANGE = ParamRange(0.0, 1.0, open=True)  # a fixed threshold q, or the quantile r of the cut
MIN_ABS_ALPHA = 1e-8
RANGES: dict[Param, ParamRange] = {"alpha": ALPHA_RANGE, "threshold": CUT_RANGE, "quantile": CUT_RANGE}
# The exponent of W(p) = p^alpha each loss gives, i.e. the loss's place on the alpha axis.
_LOSS_ALPHA = {"logp": 0.0, "p": 1.0, "dft": 1.0}


@dataclass(frozen=True)
class FamilySpec:
    """What an objective family is: its names, its per-token loss, the parameter it takes, its token selection."""

    paper: str  # the paper's name, or its prefix before `-<param>`
    loss: Literal["logp", "p", "dft", "general"]  # -log p, 1 - p, -sg(p) log p, or (1 - p^alpha) / alpha
    param: Param | None = None  # None: a parameterless family
    side: Literal["top", "bottom"] | None = None  # which tokens a cut family keeps

    @property
    def field(self) -> Literal["alpha", "threshold"] | None:
        """The `Objective` field (and search-space parameter) that holds the parameter; a quantile is a threshold."""
        if self.param is None:
            return None
        return "alpha" if self.param == "alpha" else "threshold"

    @property
    def range(self) -> ParamRange | None:
        return None if self.param is None else RANGES[self.param]

    @property
    def fixed_alpha(self) -> float | None:
        """The family's place on the alpha axis where the family fixes it (every family but the general one)."""
        return None if self.loss == "general" else _LOSS_ALPHA[self.loss]


SPECS: dict[str, FamilySpec] = {
    "nll": FamilySpec("original", "logp"),
    "p": FamilySpec("p", "p"),
    "dft": FamilySpec("dft", "dft"),
    "general": FamilySpec("GeneralFamily", "general", "alpha"),
    "top_p": FamilySpec("OnlyTopP", "p", "threshold", "top"),
    "bottom_p": FamilySpec("OnlyBottomP", "p", "threshold", "bottom"),
    "top_logp": FamilySpec("OnlyTopLogP", "logp", "threshold", "top"),
    "bottom_logp": FamilySpec("OnlyBottomLogP", "logp", "threshold", "bottom"),
    "top_quantile_p": FamilySpec("TopQuantileP", "p", "quantile", "top"),
    "bottom_quantile_p": FamilySpec("BottomQuantileP", "p", "quantile", "bottom"),
    "top_quantile_logp": FamilySpec("TopQuantileLogP", "logp", "quantile", "top"),
    "bottom_quantile_logp": FamilySpec("BottomQuantileLogP", "logp", "quantile", "bottom"),
}
FAMILIES = tuple(SPECS)
_ALIASES = {"original": "nll", "nll": "nll", "logp": "nll", "p": "p", "dft": "dft"}
_PREFIXES = {spec.paper.lower(): family for family, spec in SPECS.items() if spec.param}
_PARAM_LETTER = {"alpha": "alpha", "threshold": "q", "quantile": "r"}
_ACCEPTED = (
    "accepted names: "
    + ", ".join([*_ALIASES, *(f"{s.paper}-<{_PARAM_LETTER[s.param]}>" for s in SPECS.values() if s.param)])
    + f"; alpha in {ALPHA_RANGE} with |alpha| >= {MIN_ABS_ALPHA:g} (nearer 0 it is NLL: use original),"
    f" q and r in {CUT_RANGE}"
)

Num = TypeVar("Num")  # a float, or an array / tensor of them


def family_spec(family: str) -> FamilySpec:
    spec = SPECS.get(family)
    if spec is None:
        raise ValueError(f"unknown objective family {family!r}; accepted families: {', '.join(FAMILIES)}")
    return spec


def _format(x: float) -> str:
    """Shortest text that parses back to exactly x (`repr`), without a trailing `.0`."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Objective:
    """One SFT objective: a family, plus the value of the one parameter the family takes (if any)."""

    family: str
    alpha: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        spec = family_spec(self.family)
        for field in ("alpha", "threshold"):
            value = getattr(self, field)
            if (value is not None) != (spec.field == field):
                raise ValueError(f"family {self.family!r} {'needs' if spec.field == field else 'takes no'} {field}")
        if spec.field is None:
            return
        value = float(getattr(self, spec.field))
        if value not in spec.range or (spec.param == "alpha" and abs(value) < MIN_ABS_ALPHA):
            raise ValueError(f"{spec.field}={getattr(self, spec.field)!r} out of range; {_ACCEPTED}")
        object.__setattr__(self, spec.field, value)

    @property
    def spec(self) -> FamilySpec:
        return SPECS[self.family]

    @property
    def name(self) -> str:
        """The paper's name; `parse_objective(o.name) == o`."""
        param = self.alpha if self.alpha is not None else self.threshold
        return self.spec.paper if param is None else f"{self.spec.paper}-{_format(param)}"

    @property
    def effective_alpha(self) -> float:
        """Where the objective sits on the alpha axis: the exponent of its W(p) (NLL 0, `p` and `dft` 1,
        GeneralFamily its alpha, a cut family its loss's)."""
        return self.alpha if self.spec.fixed_alpha is None else self.spec.fixed_alpha

    def params(self) -> dict[str, str | float | None]:
        """Flat parameters for experiment tracking (the same keys for every family)."""
        return {"family": self.family, "alpha": self.alpha, "threshold": self.threshold}

    def weight(self, p: Num) -> Num:
        """W(p) = -p f'(p) for p in (0, 1] (a float, a numpy array or a tensor): how strongly a token of
        probability p pulls on the logits."""
        base = p**self.effective_alpha
        if self.spec.side is None or self.spec.param == "quantile":
            return base
        return base * ((p >= self.threshold) if self.spec.side == "top" else (p < self.threshold))


def parse_objective(name: str) -> Objective:
    """Objective from a paper name such as `original`, `p`, `GeneralFamily-0.5` or `OnlyTopP-0.1` (any case)."""
    text = name.strip().lower()
    if text in _ALIASES:
        return Objective(_ALIASES[text])
    prefix, _, param = text.partition("-")
    family = _PREFIXES.get(prefix)
    if family is None or not param:
        raise ValueError(f"unknown objective {name!r}; {_ACCEPTED}")
    try:
        value = float(param)
    except ValueError:
        raise ValueError(f"objective {name!r}: {param!r} is not a number; {_ACCEPTED}") from None
    return Objective(family, **{SPECS[family].field: value})


def objective_from_params(family: str, alpha: float | None = None, threshold: float | None = None) -> Objective:
    """Objective from search-space parameters; the one of alpha and threshold the family does not use is ignored."""
    field = family_spec(family).field
    given = {"alpha": alpha, "threshold": threshold}
    return Objective(family, **({field: given[field]} if field else {}))
