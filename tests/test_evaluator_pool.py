"""The sweep's evaluator pool (`eval.replicas`) on a real local Ray cluster, with the hf backend on CPU."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from alphasweep.config import EvalConfig
from alphasweep.evaluation.actor import Evaluator, evaluate_on_pool, get_evaluator_pool

CFG = dict(backend="hf", max_new_tokens=5, batch_size=32)


def _reader_pid(fifo: Path, pids: list[int]) -> int | None:
    """The process among `pids` that has `fifo` open (the replica that is reading it)."""
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            if any(os.readlink(fd) == str(fifo) for fd in fd_dir.iterdir()):
                return pid
        except (FileNotFoundError, PermissionError):
            continue
    return None


def _open_writers(fifos: list[Path], alive: list[threading.Thread], timeout: float = 240) -> list[int]:
    """Open each FIFO's write end; that succeeds only once a replica has opened its read end, i.e. is inside
    `evaluate` reading the benchmark. Returns the write descriptors."""
    fds: list[int | None] = [None] * len(fifos)
    deadline = time.monotonic() + timeout
    while None in fds:
        for i, fifo in enumerate(fifos):
            if fds[i] is None:
                try:
                    fds[i] = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    pass
        assert time.monotonic() < deadline and all(t.is_alive() for t in alive), "a request never reached a replica"
        time.sleep(0.05)
    return fds


def _requests(pool, model: Path, fifos: list[Path]) -> tuple[list[threading.Thread], list[dict]]:
    """One pool request per FIFO benchmark, each from its own thread (as trials call from their processes)."""
    results: list[dict] = [{} for _ in fifos]

    def call(i: int) -> None:
        spec = {"name": f"pipe{i}", "path": str(fifos[i]), "format": "exact"}
        results[i].update(evaluate_on_pool(pool, str(model), [spec]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(fifos))]
    for t in threads:
        t.start()
    return threads, results


def _fifos(tmp_path: Path, tag: str, n: int) -> list[Path]:
    paths = [tmp_path / f"{tag}{i}.jsonl" for i in range(n)]
    for p in paths:
        os.mkfifo(p)
    return paths


def test_two_replicas_evaluate_side_by_side_and_a_crashed_one_is_restarted(ray_local, tmp_path, addition_model,
                                                                           addition_files):
    ray = ray_local
    rows = addition_files[1].read_bytes()
    reference = Evaluator(CFG, log=None).evaluate(str(addition_model), [
        {"name": "ref", "path": str(addition_files[1]), "format": "exact"}])
    pool = get_evaluator_pool(EvalConfig(**CFG, replicas=2, max_restarts=2), name="test-pool")
    replicas = ray.get(pool.replicas.remote())
    assert len(replicas) == 2 and get_evaluator_pool(EvalConfig(**CFG), name="test-pool") == pool  # found by name
    pids = [ray.get(r.info.remote())["pid"] for r in replicas]

    def check(result: dict) -> None:
        assert "error" not in result, result
        assert [r["completion"] for r in result["records"]] == [r["completion"] for r in reference["records"]]
        assert list(result["scores"].values()) == list(reference["scores"].values())

    # 1. Two requests at once: both replicas are inside `evaluate` at the same time (each has opened its
    # benchmark, a FIFO, for reading), and both results are right.
    fifos = _fifos(tmp_path, "both", 2)
    threads, results = _requests(pool, addition_model, fifos)
    for fd in _open_writers(fifos, threads):
        os.write(fd, rows)
        os.close(fd)
    for t in threads:
        t.join(300)
    for r in results:
        check(r)
    assert {r["replica"] for r in results} == {0, 1}

    # 2. A replica dies mid-request: that request gets an error result, Ray restarts the replica, and the
    # pool serves the next two requests side by side again, one on the restarted replica.
    [fifo] = _fifos(tmp_path, "crash", 1)
    threads, results = _requests(pool, addition_model, [fifo])
    [fd] = _open_writers([fifo], threads)
    victim = _reader_pid(fifo, pids)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    os.close(fd)
    threads[0].join(300)
    assert "crashed" in results[0].get("error", ""), results[0]
    fifos = _fifos(tmp_path, "after", 2)
    threads, results = _requests(pool, addition_model, fifos)
    for fd in _open_writers(fifos, threads):
        os.write(fd, rows)
        os.close(fd)
    for t in threads:
        t.join(300)
    for r in results:
        check(r)
    assert {r["replica"] for r in results} == {0, 1}
    new_pids = [ray.get(r.info.remote())["pid"] for r in replicas]
    assert victim not in new_pids and set(new_pids) & set(pids)  # the dead one replaced, the other kept
    for actor in [pool, *replicas]:
        ray.kill(actor, no_restart=True)


def test_replicas_must_be_positive():
    with pytest.raises(ValueError, match="replicas"):
        EvalConfig(replicas=0)
