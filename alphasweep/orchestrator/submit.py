"""Submit a sweep to a Ray cluster through the Jobs API (`JobSubmissionClient`).

The config travels in the job's working directory, so the same file runs unchanged on a laptop and on
the cluster; tracking and Optuna storage come from the config or the environment variables
`MLFLOW_TRACKING_URI` / `ALPHASWEEP_OPTUNA_STORAGE`, which are passed on to the job when set here.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import shutil
import tempfile
import time
from pathlib import Path

import ray
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from alphasweep import compat
from alphasweep.config import ConfigError, SweepConfig

PASSED_ENV = ("MLFLOW_TRACKING_URI", "ALPHASWEEP_OPTUNA_STORAGE", "ALPHASWEEP_STORAGE_PATH")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class SubmitError(RuntimeError):
    """The cluster could not be reached, runs another Ray, or the job failed: exit code 1."""


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


@contextlib.contextmanager
def _jobs_api(address: str, job_id: str | None = None):
    """Turn the Jobs API client's errors (connection, token auth, HTTP) into one-line `SubmitError`s."""
    try:
        yield
    except SubmitError:
        raise
    except AuthenticationError as e:
        text = getattr(e, "message", "") or str(e)
        if "Authentication failed" in text or "invalid" in text.lower():
            raise SubmitError(f"the Ray cluster at {address} rejected this client's token: check RAY_AUTH_TOKEN "
                              "(or RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) against the cluster's token") from None
        raise SubmitError(f"the Ray cluster at {address} requires token authentication and this client sent no "
                          "token: set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN "
                          "(or RAY_AUTH_TOKEN_PATH)") from None
    except OSError as e:  # ConnectionError, and requests' exceptions (connection refused, timeouts)
        raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 — HTTP errors of the Jobs API arrive as RuntimeError
        text = _first_line(e)
        if job_id and "status code 404" in text:
            raise SubmitError(f"no job {job_id} on the Ray cluster at {address}") from None
        raise SubmitError(f"the Ray Jobs API at {address} failed: {text}") from None


def connect(address: str):
    """A Jobs API client for `address`, refusing a cluster that runs another Ray version."""
    with _jobs_api(address):
        client = JobSubmissionClient(address)
    remote = compat.server_ray_version(client)
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
    # The entrypoint runs in a shell: quote overrides (YAML values may hold spaces, brackets, quotes).
    entrypoint = shlex.join(["python", "-m", "alphasweep.cli", "sweep", "sweep.yaml",
                             *(arg for o in overrides for arg in ("--set", o))])
    # A random tail: two submissions of one sweep within a second must not collide.
    job_id = f"alphasweep-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    try:
        with _jobs_api(address):
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id,
                                     entrypoint_num_cpus=0, metadata={"sweep": cfg.name})
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def follow(address: str, job_id: str, echo=print) -> str:
    """Stream the job's logs until it ends; returns its final status."""
    client = connect(address)
    seen = 0
    while True:
        with _jobs_api(address, job_id):
            status = client.get_job_status(job_id)
            logs = client.get_job_logs(job_id)
        if len(logs) > seen:
            echo(logs[seen:].rstrip("\n"))
            seen = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value)
        time.sleep(2)


def status(address: str, job_id: str) -> tuple[str, str]:
    client = connect(address)
    with _jobs_api(address, job_id):
        info = client.get_job_info(job_id)
    return str(info.status.value), info.message or ""


def stop(address: str, job_id: str) -> bool:
    client = connect(address)
    with _jobs_api(address, job_id):
        return client.stop_job(job_id)


def require_address(address: str | None) -> str:
    if not address:
        raise ConfigError("submit needs --address http://HOST:8265 (or $RAY_ADDRESS)")
    return address
