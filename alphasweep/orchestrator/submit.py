"""Submit a sweep to a Ray cluster through the Jobs API (`JobSubmissionClient`).

The config travels in the job's working directory, so the same file runs unchanged on a laptop and on
the cluster; tracking and Optuna storage come from the config or the environment variables
`MLFLOW_TRACKING_URI` / `ALPHASWEEP_OPTUNA_STORAGE`, which are passed on to the job when set here.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import ray

from alphasweep.config import ConfigError, SweepConfig

PASSED_ENV = ("MLFLOW_TRACKING_URI", "ALPHASWEEP_OPTUNA_STORAGE", "ALPHASWEEP_STORAGE_PATH")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SubmitError(RuntimeError):
    """The cluster could not be reached, runs another Ray, or the job failed: exit code 1."""


def connect(address: str):
    """A Jobs API client for `address`, refusing a cluster that runs another Ray version."""
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 — connection, auth and HTTP errors all mean "cannot submit"
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0]}") from None
    remote = getattr(client, "_server_ray_version", None)  # read by the client's own version check
    if remote and remote != ray.__version__:
        raise SubmitError(f"the cluster at {address} runs Ray {remote}, this client Ray {ray.__version__}; "
                          "use the same Ray version on both (pickled trials and configs must match)")
    return client


def submit(cfg: SweepConfig, config_path: Path, address: str, *, ship_project: bool, env: dict[str, str],
           overrides: list[str] = ()) -> str:
    """Package the config (and the project, when the image lacks it) and start `alphasweep sweep` on the cluster."""
    client = connect(address)
    staging = Path(tempfile.mkdtemp(prefix="alphasweep-submit-"))
    shutil.copy(config_path, staging / "sweep.yaml")
    runtime_env: dict = {"working_dir": str(staging), "env_vars": dict(env)}
    if ship_project:
        runtime_env["py_modules"] = [str(PROJECT_ROOT / "alphasweep")]
    sets = " ".join(f"--set {o}" for o in overrides)
    entrypoint = f"python -m alphasweep.cli sweep sweep.yaml {sets}".strip()
    job_id = f"alphasweep-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id,
                                 entrypoint_num_cpus=0, metadata={"sweep": cfg.name})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def follow(address: str, job_id: str, echo=print) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    from ray.job_submission import JobStatus

    client = connect(address)
    seen = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > seen:
            echo(logs[seen:].rstrip("\n"))
            seen = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value)
        time.sleep(2)


def status(address: str, job_id: str) -> tuple[str, str]:
    info = connect(address).get_job_info(job_id)
    return str(info.status.value), info.message or ""


def stop(address: str, job_id: str) -> bool:
    return connect(address).stop_job(job_id)


def require_address(address: str | None) -> str:
    if not address:
        raise ConfigError("submit needs --address http://HOST:8265 (or $RAY_ADDRESS)")
    return address
