"""Evaluation: the evaluator actor, generation backends (vllm | hf), scorers, the benchmark registry.

Import what you need from its module (`alphasweep.evaluation.scorers.math_correct`, ...): importing the
package itself loads nothing.
"""
