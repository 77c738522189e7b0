"""SFT objectives: the registry (names, parsing, parameters and ranges, the alpha axis, W(p)) and the loss.

`registry` is torch-free and `loss` needs torch. The loss names below are loaded on first use (module
`__getattr__`), so that `import alphasweep.objectives` - and with it config validation and `alphasweep
--help` - never imports torch, while `from alphasweep.objectives import objective_loss` works as before.
"""

from __future__ import annotations

import importlib

from alphasweep.objectives.registry import (
    ALPHA_RANGE,
    CUT_RANGE,
    FAMILIES,
    MIN_ABS_ALPHA,
    SPECS,
    FamilySpec,
    Objective,
    ParamRange,
    family_spec,
    objective_from_params,
    parse_objective,
)

_LOSS_NAMES = ("CHUNK_ELEMENTS", "objective_loss", "objective_loss_with_stats", "target_log_prob")

__all__ = [
    "ALPHA_RANGE",
    "CUT_RANGE",
    "FAMILIES",
    "MIN_ABS_ALPHA",
    "SPECS",
    "FamilySpec",
    "Objective",
    "ParamRange",
    "family_spec",
    "objective_from_params",
    "parse_objective",
    *_LOSS_NAMES,
]


def __getattr__(name: str):
    if name in _LOSS_NAMES:
        return getattr(importlib.import_module("alphasweep.objectives.loss"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
