"""Evaluation: the evaluator actor, generation backends (vllm | hf), scorers, the benchmark registry.

Imports are lazy so that `import alphasweep.evaluation` stays cheap (no torch, no Ray):
`from alphasweep.evaluation import Evaluator, math_correct, run_eval` works as usual.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Evaluator": "actor", "get_evaluator": "actor", "evaluate_with_timeout": "actor",
    "EvaluatorPool": "actor", "get_evaluator_pool": "actor", "evaluate_on_pool": "actor",
    "GenerationBackend": "backends", "HFBackend": "backends", "VLLMBackend": "backends",
    "make_backend": "backends", "resolve_backend": "backends", "resolve_checkpoint": "backends",
    "engine_key": "backends",
    "BUILTIN_BENCHMARKS": "benchmarks", "FORMATS": "benchmarks", "load_benchmark": "benchmarks",
    "known_benchmarks": "benchmarks", "resolve_spec": "benchmarks",
    "SCORERS": "scorers", "EXTRACTORS": "scorers", "math_correct": "scorers", "choice_correct": "scorers",
    "exact_correct": "scorers",
    "run_eval": "runner", "format_table": "runner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"alphasweep.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'alphasweep.evaluation' has no attribute {name!r}")
