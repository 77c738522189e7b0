"""The offline GPU check (bench/gpu/): the bundle's package list, Ray's repack, the packing limit, a dry run of
the check on the CPU, and the FSDP path it measures at a world of one.

Packing the real bundle (xz over ~260 MB) takes minutes on 2 cores, so the tests build everything but the
tar.xz from the real wheels (`prepare`), and pack a small folder to test the packing and its limit.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import ray.train
import ray.train.torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from torch.distributed.fsdp import FSDPModule
from transformers import AutoModelForCausalLM

from alphasweep.workers.setup import parallelize
from alphasweep.workers.trainer import TorchTrainer

REPO = Path(__file__).resolve().parent.parent
GPU_BENCH = REPO / "bench" / "gpu"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, GPU_BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bundle = _load("bundle")


def test_bundle_pins_the_tested_versions_of_everything_the_machine_lacks():
    """Walked through this environment's metadata, the project's requirements reach exactly the pinned packages
    (and what the machine has), at the versions installed here."""
    pins, device = bundle.read_pins(), bundle.read_device_packages()
    installed = {canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    problems, _ = bundle.closure_problems(bundle.project_requirements(), installed, pins, device)
    assert problems == []
    assert {name: installed[name].version for name in pins} == pins
    assert set(pins) & set(device) == set(bundle.REPLACED_ON_MACHINE)


def test_closure_names_what_is_missing_too_old_or_unused():
    installed = {canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    roots = [Requirement("optuna>=4.5"), Requirement("click>=9")]
    problems, _ = bundle.closure_problems(roots, installed, {"optuna": "5.0.0", "datasets": "5.2.0"},
                                          {"click": "8.1.0", "numpy": None, "packaging": None, "tqdm": None,
                                           "pyyaml": None})
    assert "the project needs click>=9: the machine has 8.1.0" in problems
    assert any(p.startswith("optuna 5.0.0 needs alembic") and p.endswith("neither bundled nor on the machine")
               for p in problems)
    assert "datasets is bundled but nothing requires it" in problems


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal real wheel of package `demo` 1.0 holding `files`, with its RECORD."""
    info = "demo-1.0.dist-info"
    files = {**files, f"{info}/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in {**files, f"{info}/RECORD": record.encode()}.items():
            z.writestr(name, data)
    return path


def test_repack_drops_the_jar_and_source_maps_and_pip_installs_the_rest(tmp_path):
    wheel = _wheel(tmp_path / "demo-1.0-py3-none-any.whl", {
        "ray/__init__.py": b"", "ray/jars/ray_dist.jar": b"java" * 1000,
        "ray/dashboard/client/build/static/js/main.js": b"js", "ray/dashboard/client/build/static/js/main.js.map": b"m",
        "ray/dashboard/client/build/static/css/main.css.map": b"m"})
    dropped = bundle.repack_wheel(wheel, bundle.RAY_DROPPED)
    assert sorted(dropped) == ["ray/dashboard/client/build/static/css/main.css.map",
                               "ray/dashboard/client/build/static/js/main.js.map", "ray/jars/ray_dist.jar"]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    f"--target={tmp_path / 'site'}", str(wheel)], check=True)
    site = tmp_path / "site"
    assert (site / "ray/__init__.py").exists() and (site / "ray/dashboard/client/build/static/js/main.js").exists()
    assert not (site / "ray/jars").exists() and not list(site.rglob("*.map"))
    assert "ray_dist.jar" not in (site / "demo-1.0.dist-info/RECORD").read_text()
    with pytest.raises(SystemExit, match="nothing matches"):  # the layout changed: say so, don't ship the jar
        bundle.repack_wheel(wheel, ("ray/jars/ray_dist.jar",))


def test_pack_writes_the_bundle_and_refuses_one_over_the_limit(tmp_path):
    staging = tmp_path / "site"
    (staging / "pkg").mkdir(parents=True)
    (staging / "pkg" / "data.bin").write_bytes(os.urandom(50_000))
    with pytest.raises(SystemExit, match="over the 0.01 MB limit"):
        bundle.pack(staging, tmp_path / "out", {"packages": {}}, limit_bytes=10_000)
    assert not list((tmp_path / "out").iterdir())
    manifest = bundle.pack(staging, tmp_path / "out", {"packages": {}}, limit_bytes=1_000_000)
    archive = tmp_path / "out" / bundle.BUNDLE_NAME
    assert manifest["bytes"] == archive.stat().st_size > 50_000
    assert json.loads((tmp_path / "out" / bundle.MANIFEST_NAME).read_text())["bytes"] == manifest["bytes"]
    with tarfile.open(archive) as t:
        t.extractall(tmp_path / "back", filter="data")
    assert (tmp_path / "back/pkg/data.bin").read_bytes() == (staging / "pkg/data.bin").read_bytes()


@pytest.mark.slow
def test_bundle_stages_from_the_real_wheels(tmp_path):
    """The pinned wheels exist for CPython 3.12 manylinux (PyPI), Ray's repack finds its jar, and the staged
    folder holds together; everything pack.sh does but the minutes of xz."""
    manifest = bundle.prepare(tmp_path / "site")
    site = tmp_path / "site"
    assert manifest["packages"] == bundle.read_pins()
    assert "ray/jars/ray_dist.jar" in manifest["dropped_from_ray"]
    assert not (site / "ray/jars").exists() and not list((site / "ray/dashboard").rglob("*.map"))
    assert (site / "ray/_raylet.so").exists() and list(site.glob("pydantic_core/*.cpython-312-x86_64-linux-gnu.so"))
    assert (site / "mlflow/store/tracking/sqlalchemy_store.py").exists()
    assert 150e6 < manifest["unpacked_bytes"] < 400e6


def _check(out: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_BUNDLE": str(out / "no-bundle")}
    return subprocess.run(["bash", str(GPU_BENCH / "check.sh"), "--dry-run", str(out), *args], env=env,
                          check=False, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_check_dry_run_writes_every_part(tmp_path):
    done = _check(tmp_path / "out")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    for part in ("info", "objective", "train", "sweep", "fsdp"):
        assert figures[part]["ok"], (part, figures[part].get("error"), done.stdout[-3000:])
    assert figures["info"]["torch"] == __import__("torch").__version__ and figures["info"]["matmul"]["tflops"] > 0
    objective = figures["objective"]
    assert set(objective["variants"]) == {"cross_entropy", "objective_loss", "naive_fp32"}
    assert objective["loss_gap"] < 1e-4 and objective["time_vs_cross_entropy"] > 0
    train = figures["train"]
    assert train["model"]["flops_per_token"] > 6 * train["model"]["params"]  # + attention, lm_head counted
    assert train["plain_target_tokens_per_s"] > 0 and train["ray_worker_target_tokens_per_s"] > 0
    assert 1 < train["tokens_per_target"] < 1.5
    trials = figures["sweep"]["trials"]
    assert [t["status"] for t in trials] == ["FINISHED", "FINISHED"]
    assert all(t["startup_s"] > 0 and "gpu_mib_after" in t for t in trials)  # memory: None without a GPU
    assert figures["fsdp"]["world"] == 1 and figures["fsdp"]["target_tokens_per_s"] > 0
    assert figures["mfu"]["ray_worker"]["of_measured_matmul"] > 0
    assert set(figures["targets"]) == {"train_mfu", "train_ray_vs_plain", "objective_vs_cross_entropy_time",
                                       "sweep_gpu_mib_spread_after_trials", "sweep_ran", "fsdp_ran"}
    assert "[gpu-check] figures:" in done.stdout and (tmp_path / "out" / "gpu-check.log").stat().st_size > 0


def test_check_stops_a_part_at_its_time_box_and_keeps_going(tmp_path):
    """In a 12 s budget the training part's box (its share, ~9 s) stops it (it starts Ray, which alone takes
    longer) with everything it started, records why, and leaves the next part a clear 'not run'."""
    done = subprocess.run([sys.executable, str(GPU_BENCH / "check.py"), "--dry-run", "--parts", "train,objective",
                           "--budget-s", "12", str(tmp_path / "cut")], check=False, capture_output=True, text=True,
                          timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((tmp_path / "cut" / "gpu-check.json").read_text())
    assert figures["train"]["error"].startswith("stopped at its time box of ") and not figures["train"]["ok"]
    assert figures["objective"] == {"ok": False, "seconds": 0, "error": "not run: the run's budget was spent"}
    assert figures["targets"]["objective_vs_cross_entropy_time"]["met"] is None


def test_fsdp_shards_a_single_worker(ray_local, tiny_model, tmp_path):
    """`train.strategy: fsdp` with one worker runs FSDP2 (what the GPU check's FSDP part measures on one GPU);
    `ddp` with one worker runs the plain model."""

    def wrapped(config):
        model = parallelize(AutoModelForCausalLM.from_pretrained(config["path"]), config["strategy"], 1,
                            ray.train.torch.get_device())
        return {"fsdp": isinstance(model, FSDPModule), "type": type(model).__name__}

    kinds = {}
    for strategy in ("fsdp", "ddp"):
        result = TorchTrainer(wrapped, train_loop_config={"path": str(tiny_model), "strategy": strategy},
                              scaling_config=ray.train.ScalingConfig(num_workers=1),
                              run_config=ray.train.RunConfig(name=strategy, storage_path=str(tmp_path))).fit()
        kinds[strategy] = result.return_value
    assert kinds["fsdp"]["fsdp"] and not kinds["ddp"]["fsdp"]
