"""`alphasweep submit` against a real two-node Ray cluster, a real MLflow server and PostgreSQL.

Everything runs on this machine and is started (and killed) by the fixtures here:
- PostgreSQL (databases `mlflow` and `optuna`), from the server binaries in /usr/lib/postgresql/*/bin;
- `mlflow server` with the `mlflow` database as its backend store;
- a Ray cluster of two nodes (`ray start --head` + `ray start --address`), each with 1 CPU and its own
  temp dir, token auth off; the head declares the `TRAIN_DRIVER` resource the trial drivers take;
- for the token-auth check, a second one-node cluster with `RAY_AUTH_MODE=token`.

Other sessions run their own Ray instances on the same machine, so nothing here calls `ray stop`: each
cluster is torn down by killing exactly the processes it started (its process groups, the processes that
name its temp dir, and their descendants).

The sweep's tracking URI and Optuna storage are not in the config: they travel from the submitter's
environment (MLFLOW_TRACKING_URI, ALPHASWEEP_OPTUNA_STORAGE, ALPHASWEEP_STORAGE_PATH) to the job.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_actors, list_nodes

from local_services import free_port, mlflow_server as mlflow_server_at, postgres, wait_http

VENV_BIN = Path(sys.executable).parent
# Variables a cluster must not inherit from the test's environment: the job gets them from the submitter only.
NOT_INHERITED = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID",
                 "ALPHASWEEP_OPTUNA_STORAGE", "ALPHASWEEP_STORAGE_PATH")

pytestmark = pytest.mark.skipif(not (VENV_BIN / "ray").exists(), reason=f"no `ray` executable beside {sys.executable}")


# ============================================================================================== helpers
def _cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`alphasweep ...` in a fresh process (the client reads RAY_AUTH_MODE before `import ray`)."""
    full = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    full.update(env or {})
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "alphasweep.cli", *args], capture_output=True, text=True, env=full,
                          timeout=timeout)


def _job_id(stdout: str) -> str:
    m = re.search(r"^submitted (\S+)$", stdout, re.M)
    assert m, stdout
    return m.group(1)


# =========================================================================================== PostgreSQL
class Postgres:
    def __init__(self, port: int):
        self.port = port

    def url(self, database: str) -> str:
        # The driver is explicit: SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, which is not installed.
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def query(self, database: str, sql: str, *params) -> list[tuple]:
        import psycopg2  # noqa: PLC0415 - optional (dev extra): the fixture that starts PostgreSQL skips without it

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def postgres_server():
    """A throwaway PostgreSQL server on 127.0.0.1 (trust auth) with the databases `mlflow` and `optuna`."""
    psycopg2 = pytest.importorskip("psycopg2")
    with postgres("--auth=trust") as (port, _, _):
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            for db in ("mlflow", "optuna"):
                cur.execute(f"CREATE DATABASE {db}")
        conn.close()
        yield Postgres(port)


@pytest.fixture(scope="module")
def mlflow_pg_server(postgres_server, tmp_path_factory):
    """`mlflow server` with the PostgreSQL `mlflow` database as its backend store; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    with mlflow_server_at(["server", "--backend-store-uri", postgres_server.url("mlflow"), "--artifacts-destination",
                           str(root / "artifacts"), "--workers", "1"], root, env) as uri:
        yield uri


# ================================================================================================= Ray
def _kill_tree(leaders: list[int], marker: str | None, since: float) -> None:
    """SIGKILL the process groups of `leaders`, every process whose command line names `marker`, and all
    their descendants (Ray workers run in their own process groups, under the raylet). Only processes created
    after `since` (a reused process group id is not ours), never this process or its parents."""
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    for _ in range(5):
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid in me or p.create_time() < since:
                    continue
                if os.getpgid(p.pid) in leaders or (marker and any(marker in a for a in p.info["cmdline"] or ())):
                    found[p.pid] = p
            except (psutil.Error, OSError):
                continue
        for p in list(found.values()):
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.Error:
                pass
        alive = [p for pid, p in found.items() if pid not in me and _running(p)]
        if not alive:
            return
        for p in alive:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        deadline = time.monotonic() + 10  # killed processes reparented to init may linger as zombies: done too
        while time.monotonic() < deadline and any(_running(p) for p in alive):
            time.sleep(0.1)


def _running(p) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class RayCluster:
    """A Ray cluster of nodes started with `ray start` on this machine, each node with its own temp dir."""

    def __init__(self, auth_token: str | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="asray-", dir="/tmp"))  # short: Unix socket paths
        self.token = auth_token
        self.leaders: list[int] = []
        self.started = time.time() - 5  # psutil create_time runs ~0.3 s behind time.time() here
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` comes from the head's PATH
            HOME=str(self.root),                                   # keep ~/.ray (auth tokens) of this machine alone
            RAY_USAGE_STATS_ENABLED="0",
            RAY_AUTH_MODE="token" if auth_token else "disabled",
        )
        if auth_token:
            env["RAY_AUTH_TOKEN"] = auth_token
        self.env = env

    def _start(self, name: str, args: list[str]) -> None:
        out = open(self.root / f"{name}.out", "wb")
        proc = subprocess.Popen(
            [str(VENV_BIN / "ray"), "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
             "--object-store-memory", str(150 * 1024**2), "--dashboard-agent-listen-port", str(free_port()),
             "--temp-dir", str(self.root / name), "--disable-usage-stats"],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.leaders.append(proc.pid)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            rc = None
        out.close()
        if rc != 0:
            pytest.fail(f"`ray start` ({name}) failed:\n{(self.root / f'{name}.out').read_text()[-3000:]}")

    def start_head(self, resources: dict) -> None:
        self._start("head", ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(self.dashboard_port),
                             "--ray-client-server-port", str(free_port()), "--resources", json.dumps(resources)])
        # Up when it answers; with token auth on, that answer is 401 to this token-less request.
        wait_http(self.address + "/api/version", None, 60, ok=(200, 401) if self.token else (200,))

    def add_node(self, name: str) -> None:
        self._start(name, ["--address", f"127.0.0.1:{self.gcs_port}"])

    def nodes(self) -> list:
        return list_nodes(address=self.address, detail=True)

    def wait_nodes(self, n: int, timeout: float = 60) -> list:
        deadline = time.monotonic() + timeout
        while True:
            alive = [x for x in self.nodes() if x.state == "ALIVE"]
            if len(alive) >= n or time.monotonic() > deadline:
                return alive
            time.sleep(0.5)

    def shutdown(self) -> None:
        _kill_tree(self.leaders, str(self.root), self.started)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """Head (1 CPU, TRAIN_DRIVER: 8) + one worker node (1 CPU), token auth off."""
    cluster = RayCluster()
    try:
        cluster.start_head({"TRAIN_DRIVER": 8})
        cluster.add_node("worker1")
        alive = cluster.wait_nodes(2)
        assert len(alive) == 2, alive
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def token_cluster():
    """A one-node cluster with token auth on (RAY_AUTH_MODE=token, the token in RAY_AUTH_TOKEN)."""
    cluster = RayCluster(auth_token=secrets.token_hex(32))
    try:
        cluster.start_head({"TRAIN_DRIVER": 8})
        yield cluster
    finally:
        cluster.shutdown()


# ============================================================================================= configs
@pytest.fixture(scope="module")
def cluster_dirs():
    root = Path(tempfile.mkdtemp(prefix="assub-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _config(path: Path, name: str, model: Path | str, addition) -> Path:
    """One model x one domain, two trials at a time: the trials (1 CPU each, training in the trial) need both nodes.

    No tracking URI and no Optuna storage here: they come from the submitter's environment."""
    cfg = {
        "name": name,
        "output_dir": str(path.parent / f"{name}-out"),
        "models": [{"name": "tiny", "path": str(model)}],
        "domains": [{"name": "addition", "train": {"path": str(addition[0]), "heldout": 16},
                     "benchmarks": [{"name": "addition", "path": str(addition[1]), "format": "exact"}]}],
        "search": {"families": ["nll", "p", "general"], "enqueue": ["original", "p"], "probe_warm_start": False},
        "budget": {"trials_per_pair": 2, "max_concurrent": 2},
        "train": {"steps": 8, "batch_size": 8, "learning_rate": 3e-3, "max_length": 24, "workers": 1,
                  "report_every": 4, "eval_every": 4},
        "eval": {"max_new_tokens": 6, "batch_size": 32, "limit": 16},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _submit_env(postgres_server, mlflow_uri: str, root: Path) -> dict:
    return {"MLFLOW_TRACKING_URI": mlflow_uri, "ALPHASWEEP_OPTUNA_STORAGE": postgres_server.url("optuna"),
            "ALPHASWEEP_STORAGE_PATH": str(root / "checkpoints")}  # one path both nodes see (same machine)


BROKEN_OVERRIDE = "models=[{name: tiny, path: /nonexistent/alphasweep model}]"


@pytest.fixture(scope="module")
def broken_job(ray_cluster, cluster_dirs, tiny_model, addition_files):
    """A job whose model path does not exist on the cluster, submitted without --follow (it fails while the
    sweep below runs). The path comes in through `--set`, with a space and YAML brackets in it: the job's
    shell entrypoint must pass the override on as one argument."""
    config = _config(cluster_dirs / "broken.yaml", "broken", tiny_model, addition_files)
    return _cli("submit", str(config), "--address", ray_cluster.address, "--set", BROKEN_OVERRIDE, timeout=120)


@pytest.fixture(scope="module")
def sweep_job(broken_job, ray_cluster, postgres_server, mlflow_pg_server, cluster_dirs, tiny_model, addition_files):
    """`alphasweep submit --follow` of a 1-pair x 2-trial sweep to the two-node cluster (run once)."""
    config = _config(cluster_dirs / "sweep.yaml", "cluster", tiny_model, addition_files)
    env = _submit_env(postgres_server, mlflow_pg_server, cluster_dirs)
    started = time.monotonic()
    proc = _cli("submit", str(config), "--address", ray_cluster.address, "--follow", env=env, timeout=600)
    return {"config": config, "env": env, "proc": proc, "seconds": time.monotonic() - started}


# =============================================================================================== tests
def test_submit_unreachable_cluster_exits_1_with_one_line(tmp_path, tiny_model, addition_files):
    config = _config(tmp_path / "sweep.yaml", "unreachable", tiny_model, addition_files)
    address = f"http://127.0.0.1:{free_port()}"
    proc = _cli("submit", str(config), "--address", address, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Ray Jobs API" in lines[0] and address in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_submitted_sweep_runs_on_both_nodes_and_records_to_postgres(sweep_job, ray_cluster, postgres_server,
                                                                    mlflow_pg_server):
    proc = sweep_job["proc"]
    print(f"submit --follow took {sweep_job['seconds']:.0f} s")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    job = _job_id(proc.stdout)
    assert proc.stdout.rstrip().endswith(f"{job}: SUCCEEDED")
    assert "best objective" in proc.stdout  # the sweep's report, streamed from the job's logs
    assert JobSubmissionClient(ray_cluster.address).get_job_status(job).value == "SUCCEEDED"

    # Both nodes trained: a one-worker trial trains in its own Tune trial actor (runner auto -> tune), which
    # holds the worker's CPU; 1 CPU per node and two trials at a time put the two trial actors on distinct nodes.
    nodes = {n.node_id for n in ray_cluster.nodes()}
    actors = list_actors(address=ray_cluster.address, detail=True, raise_on_missing_output=False)
    trials = [a for a in actors if a.class_name.endswith("ImplicitFunc")]  # Tune's function trainable
    assert len(trials) == 2, [(a.class_name, a.node_id) for a in actors]
    assert {t.node_id for t in trials} == nodes and len(nodes) == 2

    # MLflow: on the server's PostgreSQL database, nothing left RUNNING.
    client = MlflowClient(mlflow_pg_server)
    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    kinds = sorted(r.data.tags.get("alphasweep.kind") for r in runs)
    assert kinds == ["pair", "trial", "trial"], kinds
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all("score" in r.data.metrics for r in runs if r.data.tags["alphasweep.kind"] == "trial")
    rows = postgres_server.query("mlflow", "SELECT r.status FROM runs r JOIN experiments e "
                                            "ON r.experiment_id = e.experiment_id WHERE e.name = %s", "cluster")
    assert sorted(s for (s,) in rows) == ["FINISHED"] * 3

    # Optuna: the study lives in the PostgreSQL `optuna` database; both trials COMPLETE.
    storage = postgres_server.url("optuna")
    study = optuna.load_study(study_name="tiny/addition", storage=storage)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE] * 2, states
    assert {t.params["family"] for t in study.trials} == {"nll", "p"}  # the enqueued warm start
    assert postgres_server.query("optuna", "SELECT study_name FROM studies") == [("tiny/addition",)]
    # The job used the submitter's settings, not the config's fallbacks (sqlite files in output_dir).
    out = Path(yaml.safe_load(sweep_job["config"].read_text())["output_dir"])
    assert not (out / "optuna.db").exists() and not (out / "mlflow.db").exists()
    assert any((Path(sweep_job["env"]["ALPHASWEEP_STORAGE_PATH"])).iterdir())


def test_job_that_fails_on_the_cluster_reports_failed(broken_job, ray_cluster):
    """The model path is checked where the sweep runs (on the cluster), so the job starts and then fails:
    `--status` exits 1 and says FAILED, with the sweep's own error."""
    proc = broken_job
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = _job_id(proc.stdout)
    deadline = time.monotonic() + 180
    while True:
        status = _cli("submit", "--status", job, "--address", ray_cluster.address, timeout=60)
        if status.returncode != 0 or time.monotonic() > deadline:
            break
        assert re.search(rf"^{re.escape(job)}: (PENDING|RUNNING)", status.stdout), status.stdout + status.stderr
        time.sleep(2)
    assert status.returncode == 1, status.stdout + status.stderr
    assert status.stdout.startswith(f"{job}: FAILED"), status.stdout
    assert "models.0.path: model directory not found: /nonexistent/alphasweep model" in status.stdout

    unknown = _cli("submit", "--status", "no-such-job", "--address", ray_cluster.address, timeout=60)
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert unknown.stderr.strip() == f"error: no job no-such-job on the Ray cluster at {ray_cluster.address}"


def test_token_auth_cluster_needs_the_token(token_cluster, sweep_job, postgres_server):
    """With RAY_AUTH_MODE=token on the cluster, submit works when the client has the token and fails
    clearly (exit 1, one line) without it. The finished sweep is resubmitted: it only reports again."""
    config, env = sweep_job["config"], sweep_job["env"]
    assert sweep_job["proc"].returncode == 0

    bare = _cli("submit", str(config), "--address", token_cluster.address, env={**env, "RAY_AUTH_MODE": "disabled"},
                timeout=120)
    assert bare.returncode == 1, bare.stdout + bare.stderr
    lines = bare.stderr.strip().splitlines()
    assert len(lines) == 1 and "token" in lines[0].lower() and "RAY_AUTH_TOKEN" in lines[0], bare.stderr

    wrong = _cli("submit", "--status", "x", "--address", token_cluster.address,
                 env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}, timeout=120)
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stdout + wrong.stderr
    assert "token" in wrong.stderr.lower()

    auth = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token_cluster.token}
    proc = _cli("submit", str(config), "--address", token_cluster.address, "--follow", env=auth, timeout=300)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    job = _job_id(proc.stdout)
    assert proc.stdout.rstrip().endswith(f"{job}: SUCCEEDED")
    assert "2/2 trials done" in proc.stdout
    status = _cli("submit", "--status", job, "--address", token_cluster.address, env=auth, timeout=60)
    assert status.returncode == 0 and status.stdout.startswith(f"{job}: SUCCEEDED"), status.stdout + status.stderr
    # Reporting again added nothing and left nothing RUNNING.
    rows = postgres_server.query("mlflow", "SELECT r.status FROM runs r JOIN experiments e "
                                            "ON r.experiment_id = e.experiment_id WHERE e.name = %s", "cluster")
    assert sorted(s for (s,) in rows) == ["FINISHED"] * 3
    assert postgres_server.query("optuna", "SELECT state FROM trials") == [("COMPLETE",)] * 2
