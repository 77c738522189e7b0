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

from alphasweep.config import SweepConfig, load_config
from alphasweep.demo import prepare_demo
from alphasweep.synthetic import write_task_files
from alphasweep.tinykit import build_base

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

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
def demo_kit(kit_dir) -> SweepConfig:
    """The embedded demo's base model and data, built as `alphasweep sweep` builds them, with every `demo:`
    path resolved. Built in $ALPHASWEEP_CACHE when set (as the demo does: a cached base is reused), else in
    kit_dir/demo; test_continuum's sweep uses the same directory. A cached base is only valid for the numeric
    path (ATEN_CPU_CAPABILITY) it was built on: its key cannot see the path."""
    cache = os.environ.get("ALPHASWEEP_CACHE") or kit_dir / "demo"
    return prepare_demo(load_config(DEMO, [f"demo.cache_dir={cache}"]), log=lambda msg: None)


@pytest.fixture(scope="session")
def addition_model(demo_kit) -> Path:
    """The demo's base: pretrained on addition to a plateau, with the demo's test problems held out (which
    include `addition_files`' test rows), so it solves most held-out sums on every numeric path."""
    return Path(demo_kit.models[0].path)


@pytest.fixture(scope="session")
def recode_files(demo_kit) -> tuple[Path, Path]:
    """(train.jsonl, test.jsonl) of the demo's intermediate domain: the base gives its targets ~0.25 each."""
    spec = next(d for d in demo_kit.domains if d.name == "recode")
    return Path(spec.train.path), Path(spec.benchmarks[0].path)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance (with the dashboard, which Train-in-Tune needs) for the session."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False,
                 resources={"TRAIN_DRIVER": 8})
    # A test that let Ray start itself (ray.data, ray.get) leaves an instance without TRAIN_DRIVER, where a
    # Ray Train trial would wait forever: fail at once instead.
    assert ray.cluster_resources().get("TRAIN_DRIVER") == 8, "an earlier test started Ray without ray_local"
    yield ray
    ray.shutdown()
