"""Shared fixtures: tiny models and synthetic data built here, a real local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

# Our own local clusters: Ray 2.59+ turns token auth on for new ones unless told not to (read at import).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No test reaches the Hugging Face hub: a hub id fails at once instead of waiting on the network. Set before
# the test Ray cluster starts, so its workers run offline too.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import ray
import torch

from alphasweep.synthetic import problems, write_task_files
from alphasweep.tinykit import build_base

# One torch thread per test process: several threads per process on 2 shared cores run ~15x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def kit_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kit")


@pytest.fixture(scope="session")
def tiny_model(kit_dir) -> Path:
    """An untrained tiny Llama with its tokenizer (seconds to build)."""
    return build_base(kit_dir, steps=0)


@pytest.fixture(scope="session")
def addition_files(kit_dir) -> tuple[Path, Path]:
    """(train.jsonl, test.jsonl) of the synthetic addition task."""
    return write_task_files("addition", kit_dir / "addition", n_train=512, n_test=64, seed=0)


@pytest.fixture(scope="session")
def addition_model(kit_dir) -> Path:
    """A tiny base pretrained on addition (its test problems held out): the 'fine-tuned twin' (~70%)."""
    held_out = [p for p, _ in problems("addition", 64, seed=10_000)]
    return build_base(kit_dir, pretrain_tasks={"addition": 3000}, exclude={"addition": held_out}, steps=600)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance (with the dashboard, which Train-in-Tune needs) for the session."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False,
                 resources={"TRAIN_DRIVER": 8})
    yield ray
    ray.shutdown()
