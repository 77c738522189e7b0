"""The embedded demo shows the paper's finding: p beats NLL where the base knows the domain, NLL wins where
it does not. A reduced run of `configs/demo.yaml` (NLL and p only, fewer test problems), one seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_demo_reproduces_the_continuum_direction(ray_local, tmp_path):
    reduced = ["--set", f"output_dir={tmp_path}/out", "--set", "budget.trials_per_pair=2",
               "--set", "search.probe_warm_start=false"]
    env = {**os.environ, "ALPHASWEEP_CACHE": str(tmp_path / "cache"),
           "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-m", "alphasweep.cli", "sweep", *reduced], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = subprocess.run([sys.executable, "-m", "alphasweep.cli", "report", f"{tmp_path}/out", "--json"],
                            env=env, capture_output=True, text=True, timeout=300)
    pairs = {p["domain"]: p for p in json.loads(report.stdout)["pairs"]}

    strong, weak = pairs["addition-noisy"], pairs["cipher"]
    assert strong["continuum"] == "strong" and weak["continuum"] == "weak", (strong, weak)
    assert strong["scores"]["p"] >= strong["scores"]["original"] + 0.05, strong
    assert weak["scores"]["original"] >= weak["scores"]["p"] + 0.05, weak
