"""The embedded demo shows the three regimes of the paper's continuum: p beats NLL where the base knows the
domain, NLL wins where it does not, and the two are level in between. `configs/demo.yaml` as it ships, with
only NLL and p per pair (2 trials instead of the demo's 4), one seed; bench/robustness.py checks the same
figures over 3 seeds x 3 numeric paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_shows_the_three_regimes(ray_local, demo_kit, tmp_path):
    cache = demo_kit.demo.cache_dir  # where demo_kit built the base: the sweep reuses it (same recipe, same key)
    reduced = ["--set", f"output_dir={tmp_path}/out", "--set", "budget.trials_per_pair=2",
               "--set", "search.probe_warm_start=false"]
    env = {**os.environ, "ALPHASWEEP_CACHE": cache, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-m", "alphasweep.cli", "sweep", *reduced], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = subprocess.run([sys.executable, "-m", "alphasweep.cli", "report", f"{tmp_path}/out", "--json"],
                            env=env, capture_output=True, text=True, timeout=300)
    pairs = {p["domain"]: p for p in json.loads(report.stdout)["pairs"]}

    strong, middle, weak = pairs["addition-noisy"], pairs["recode"], pairs["cipher"]
    assert [strong["continuum"], middle["continuum"], weak["continuum"]] == ["strong", "intermediate", "weak"], pairs
    assert strong["scores"]["p"] >= strong["scores"]["original"] + 0.10, strong
    assert weak["scores"]["original"] >= 0.70 and weak["scores"]["p"] <= 0.10, weak
    assert abs(middle["scores"]["original"] - middle["scores"]["p"]) <= 0.12, middle
    assert min(middle["scores"]["original"], middle["scores"]["p"]) >= 0.5, middle  # the base scores ~0.02
