"""What a user sees after a small sweep: its console, the MLflow UI and optuna-dashboard in a real browser.

One small finished sweep (one pair, three trials) is shared by every test here. The browser is Debian's
Chromium (tests/services.sh installs it), driven by Playwright's Python API; Playwright's own browser
download is never used. Screenshots go to the test's temporary directory and are named in any failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from wsgiref.simple_server import make_server

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from optuna_dashboard import wsgi
from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

from local_services import free_port, kill_group, mlflow_server, wait_http

CHROMIUM = os.environ.get("ALPHASWEEP_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections are refused on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROGRESS = re.compile(r"score \d\.\d{3} in [\dm]+s \| 1/3 done, 1 running, 1 queued \| [\dm]+s elapsed, ~[\dm]+s left")
LINE = re.compile(r"^\d\d:\d\d:\d\d (sweep ui: |\[tiny/addition\] )")


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory, addition_model, addition_files):
    """A finished one-pair sweep: (output dir, the sweep's console output, the MLflow experiment id)."""
    root = tmp_path_factory.mktemp("ui")
    cfg = {
        "name": "ui", "output_dir": str(root / "out"),
        "models": [{"name": "tiny", "path": str(addition_model)}],  # scores that differ by objective
        "domains": [{"name": "addition", "train": {"path": str(addition_files[0]), "heldout": 16},
                     "benchmarks": [{"name": "addition", "path": str(addition_files[1]), "format": "exact"}]}],
        "search": {"families": ["nll", "p", "general", "top_logp"], "enqueue": ["original", "OnlyTopLogP-0.2"],
                   "probe_warm_start": False},
        "budget": {"trials_per_pair": 3, "max_concurrent": 2},
        "train": {"steps": 8, "batch_size": 8, "learning_rate": 3e-3, "max_length": 24, "workers": 1,
                  "report_every": 4, "eval_every": 4},
        "eval": {"max_new_tokens": 6, "batch_size": 32, "limit": 16},
    }
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "alphasweep.cli", "sweep", str(path)], capture_output=True, text=True,
                          timeout=900, cwd=root,
                          env={**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = MlflowClient(f"sqlite:///{root}/out/mlflow.db").get_experiment_by_name("ui")
    return root / "out", proc.stdout, exp.experiment_id


def test_the_console_shows_the_sweeps_own_lines_and_the_log_holds_the_rest(sweep):
    out, stdout, _ = sweep
    lines = stdout.splitlines()
    table = lines.index("") if "" in lines else len(lines)
    progress = lines[:table]
    assert all(LINE.match(line) for line in progress), "\n".join(progress)  # nothing from Ray, Tune or libraries
    events = [line for line in progress if "] #" in line]
    assert len(events) == 6, progress  # started and finished, for each of the three trials
    assert any(PROGRESS.search(line) for line in events), progress
    assert len(lines) <= 20 + 7, stdout  # the report's verdict and its table of the 3 objectives: 7 lines more
    log = (out / "logs" / "sweep.log").read_text()
    assert "Tune" in log or "ray" in log.lower()  # what stayed off the console is in the log
    assert "alphasweep dashboard" in stdout


def _browser(playwright, tmp_path: Path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (tests/services.sh installs Debian's `chromium`)")
    return playwright.chromium.launch_persistent_context(
        str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1500, "height": 1000})


class Shots:
    """Screenshots of each page checked, named in a failure's message."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.taken = page, folder, []
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        path = self.folder / f"{len(self.taken):02d}-{name}.png"
        self.page.screenshot(path=path, full_page=True)
        self.taken.append(path)

    def check(self, ok: bool, what: str) -> None:
        assert ok, f"{what}; screenshots: {', '.join(map(str, self.taken))}"

    def wait(self, locator, name: str, what: str) -> None:
        """Wait for `locator`, then take the page's screenshot (taken on a timeout too, and named)."""
        try:
            locator.wait_for()
        except PlaywrightTimeout:
            self(f"{name}-timed-out")
            self.check(False, f"{what} (timed out)")
        self(name)


def test_the_printed_link_and_the_pages_that_compare_objectives(sweep, tmp_path):
    out, stdout, exp_id = sweep
    link = next(re.search(r"http://\S+", line).group(0) for line in stdout.splitlines()
                if line.startswith("open the UI:"))
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    runs = client.search_runs([exp_id])
    (parent,) = [r for r in runs if r.data.tags["alphasweep.kind"] == "pair"]
    children = [r for r in runs if r.data.tags["alphasweep.kind"] == "trial"]
    assert len(children) == 3

    with mlflow_server(["server", "--backend-store-uri", f"sqlite:///{out}/mlflow.db", "--workers", "1"],
                       tmp_path) as ui, sync_playwright() as pw:
        browser = _browser(pw, tmp_path)
        page = browser.new_page()
        page.set_default_timeout(90_000)  # the first page of a fresh server on a busy machine
        shots = Shots(page, tmp_path / "screens")

        page.goto(link.replace("http://127.0.0.1:5000", ui))
        shots.wait(page.get_by_role("link", name="tiny/addition", exact=True), "runs-table",
                   "the printed link does not land on the runs table")
        shots.check(page.get_by_role("columnheader", name="score").count() > 0
                    and page.get_by_role("columnheader", name="alpha").count() > 0,
                    "the link's runs table shows no score and alpha columns")
        names = [r.info.run_name for r in children]
        shots.check(page.get_by_text(names[0], exact=True).count() == 0, "children listed before expanding the parent")
        page.locator("[col-id='attributes.`Run Name`']", has_text="tiny/addition").locator("button").first.click()
        for name in names:
            shots.wait(page.get_by_text(name, exact=True), "children-nested", f"{name} not shown under its parent")

        page.goto(f"{ui}/#/compare-runs?runs={json.dumps([r.info.run_id for r in children])}"
                  f"&experiments={json.dumps([exp_id])}")
        page.get_by_text("Scatter Plot", exact=True).click()
        page.locator("#y-axis-selector").click()
        page.get_by_role("option", name="score", exact=True).click()
        page.wait_for_timeout(1000)
        shots("compare-score-vs-alpha")
        plot = page.evaluate("""() => {
            const gd = [...document.querySelectorAll('.js-plotly-plot')].pop();
            const layout = gd._fullLayout;
            return {x: gd.data[0].x.map(Number), y: gd.data[0].y.map(Number), type: layout.xaxis.type,
                    xtitle: layout.xaxis.title.text, ytitle: layout.yaxis.title.text};
        }""")
        points = sorted((float(r.data.params["alpha"]), r.data.metrics["score"]) for r in children)
        shots.check(plot["xtitle"] == "alpha" and plot["ytitle"] == "score" and plot["type"] == "linear"
                    and sorted(zip(plot["x"], plot["y"], strict=True)) == points,
                    f"the compare page's scatter plot is not score against a numeric alpha for every run: {plot}")

        artifacts = f"{ui}/#/experiments/{exp_id}/runs/{parent.info.run_id}/artifacts"
        page.goto(f"{artifacts}/results.json")
        shots.wait(page.get_by_text("OnlyTopLogP-0.2", exact=True).first, "parent-results-table",
                   "the parent's results table does not show its objectives")
        page.get_by_text("score_vs_alpha.png", exact=True).click()  # the artifact tree, as a user would
        try:  # the figure is 840 px wide (plots.py); the viewer's own icons are far smaller
            page.wait_for_function("() => [...document.images].some(i => i.complete && i.naturalWidth >= 600)")
        except PlaywrightTimeout:
            shots("parent-plot-timed-out")
            shots.check(False, "the parent's score plot does not load")
        shots("parent-plot")
        browser.close()


def test_optuna_dashboard_shows_the_study_with_no_failed_trial(sweep, tmp_path):
    out, _, _ = sweep
    storage = optuna.storages.RDBStorage(f"sqlite:///{out}/optuna.db")
    study = optuna.load_study(study_name="tiny/addition", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert study.metric_names == ["score"]
    assert all(t.user_attrs["mlflow_run_id"] and t.user_attrs["objective"] for t in study.trials)

    port = free_port()
    server = make_server("127.0.0.1", port, wsgi(storage))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", None, 60)
        with sync_playwright() as pw:
            browser = _browser(pw, tmp_path)
            page = browser.new_page()
            page.set_default_timeout(60_000)
            shots = Shots(page, tmp_path / "screens")
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}/trials")
            shots.wait(page.get_by_text("3 Trials"), "dashboard-trials", "no list of the study's trials")
            shots.check(page.get_by_text("Complete", exact=True).count() >= 3, "trials are not shown as complete")
            shots.check(page.get_by_text("Fail", exact=True).count() == 0, "the dashboard shows a failed trial")
            page.goto(f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}")
            shots.wait(page.get_by_text("Hyperparameter Importance"), "dashboard-study", "no study page")
            browser.close()
    finally:
        server.shutdown()


def test_the_dashboard_command_serves_the_sweeps_storage(sweep, tmp_path):
    out, _, _ = sweep
    port = free_port()
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "alphasweep.cli", "dashboard", str(out), "--port", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", proc, 120, log)
        assert f"http://127.0.0.1:{port}/" in log.read_text()
    finally:
        kill_group(proc)
