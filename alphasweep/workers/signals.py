"""The benchmark signal: accuracy on a few benchmark items of the model being trained (ASHA's `benchmark`)."""

from __future__ import annotations

from dataclasses import dataclass

from alphasweep.config import BenchmarkSpec, EvalConfig
from alphasweep.evaluation.actor import Evaluator
from alphasweep.workers.checkpoints import unwrap


@dataclass(frozen=True)
class SignalSpec:
    """Score the first `limit` items of each benchmark inside the worker every `eval_every` steps
    (`signal_score`), with the sweep's eval settings and the hf backend."""

    benchmarks: tuple[BenchmarkSpec, ...]
    limit: int
    eval: EvalConfig


class BenchmarkSignal:
    """Accuracy of the model being trained on a few benchmark items: an intermediate signal comparable
    across objectives (held-out NLL favours NLL itself). Every rank generates the same prompts (FSDP
    gathers weights in each forward); greedy decoding keeps the ranks in step."""

    def __init__(self, spec: SignalSpec):
        self.benchmarks, self.limit = list(spec.benchmarks), spec.limit
        eval_cfg = spec.eval.model_copy(update={"backend": "hf", "temperature": 0.0, "n_samples": 1})
        self.evaluator = Evaluator(eval_cfg, log=None)

    def __call__(self, model, tokenizer, step: int) -> float:
        inner = unwrap(model)
        inner.eval()
        try:
            result = self.evaluator.evaluate_model(inner, tokenizer, self.benchmarks, self.limit, f"step {step}")
        finally:
            inner.train()
        return result["mean_score"]
