"""Real servers the tests start on 127.0.0.1: free ports, HTTP readiness, PostgreSQL, `mlflow server`.

Shared by the sweep, cluster and manifest tests so that each service starts and stops one way.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

MLFLOW_BIN = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None,
              ok: tuple[int, ...] = (200,)) -> None:
    """Poll `url` until it answers with a status in `ok`; fail with the log's tail if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
        except OSError:
            pass
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            pytest.fail(f"{url} did not come up within {timeout:.0f} s\n{tail}")
        time.sleep(0.3)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of `proc` (started with start_new_session), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@contextmanager
def postgres(*initdb_auth: str):
    """A throwaway PostgreSQL server on 127.0.0.1; yields (port, socket dir, bin dir). Skips where PostgreSQL's
    server binaries are absent. initdb refuses to run as root, so as root the server runs as `postgres`."""
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)),
                                           None)
    if found is None:
        pytest.skip("no PostgreSQL server binaries (initdb) on PATH or in /usr/lib/postgresql/*/bin")
    bindir = Path(found).parent
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run initdb as")
        as_user = ["runuser", "-u", "postgres", "--"]
    work = Path(tempfile.mkdtemp(prefix="aspg-", dir="/tmp"))  # short: the socket path must fit in 107 bytes
    os.chmod(work, 0o755)
    if owner:
        os.chown(work, owner.pw_uid, owner.pw_gid)
    data, port = work / "data", free_port()
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", *initdb_auth,
                        "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(work / "log"),
                        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {work} -c fsync=off -c max_connections=200",
                        "start"], check=True, capture_output=True, timeout=120)
        yield port, work, bindir
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def mlflow_server(args: list[str], root: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """`mlflow <args>` (a `server` command line without host and port) on a free loopback port; yields its URI.
    Its output goes to root/server.log, shown if it does not come up."""
    if not MLFLOW_BIN.exists():
        pytest.skip(f"no mlflow executable beside {sys.executable}")
    port = free_port()
    log_path = root / "server.log"
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env if env is not None else os.environ)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(MLFLOW_BIN), *args, "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        try:
            wait_http(uri + "/health", proc, timeout, log_path)
            yield uri
        finally:
            kill_group(proc)
