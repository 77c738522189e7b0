"""Generation backends behind one interface: vLLM's offline engine on GPUs, transformers `generate` elsewhere.

`GenerationBackend.load(path)` makes a checkpoint current (a no-op when it already is; a new path
replaces the old model and frees it), `generate(prompts, n)` returns `n` completions per prompt.
Both backends tokenize prompts the same way (`encode_prompt`), so their greedy outputs agree.

vLLM memory: vLLM does not give GPU memory back when an `LLM` object is deleted. Here the engine
lives in a child process (spawned, in its own process group, killed with its parent via
PR_SET_PDEATHSIG) that the backend stops when the checkpoint changes; the operating system then
frees every byte the engine held, whatever vLLM version runs. The price is an engine start per
checkpoint (model load, profiling, CUDA graphs; `engine_kwargs: {enforce_eager: true}` skips the
graphs), which a sweep pays once per trial anyway, since every trial has a new checkpoint.
"""

from __future__ import annotations

import abc
import copy
import ctypes
import gc
import importlib.util
import multiprocessing
import os
import re
import signal
import traceback
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
    "make_backend",
    "resolve_backend",
    "resolve_checkpoint",
    "release_host_memory",
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


def _vllm_server(conn, path: str, engine_kwargs: dict[str, Any]) -> None:  # runs in the child process
    os.setpgrp()  # its own process group, so the parent can kill the engine's processes with it
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the evaluator
    except (OSError, AttributeError):
        pass
    try:
        from vllm import LLM, SamplingParams  # optional (the `vllm` extra, GPU nodes); only this child needs it

        llm = LLM(model=path, **engine_kwargs)
        tokenizer = llm.get_tokenizer()
        conn.send(("ready", None))
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
            _, prompts, params = msg
            batch = [{"prompt_token_ids": encode_prompt(tokenizer, p)} for p in prompts]
            outputs = llm.generate(batch, SamplingParams(**params), use_tqdm=False)
            conn.send(("ok", [[c.text for c in o.outputs] for o in outputs]))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc(limit=8)))
    del llm
    gc.collect()
    conn.close()


class VLLMBackend(GenerationBackend):
    """`vllm.LLM` in a child process per checkpoint (see the module docstring for why)."""

    name = "vllm"

    def __init__(self, cfg: EvalConfig):
        super().__init__(cfg)
        self._proc = None
        self._conn = None

    def engine_kwargs(self) -> dict[str, Any]:
        cfg = self.cfg
        kwargs: dict[str, Any] = dict(
            tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
            dtype="bfloat16", seed=cfg.seed,
        )
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if cfg.tensor_parallel_size > 1:  # not "ray": we may sit inside a Tune/Train placement group
            kwargs["distributed_executor_backend"] = "mp"
        return {**kwargs, **cfg.engine_kwargs}

    def sampling_params(self, n: int) -> dict[str, Any]:
        cfg = self.cfg
        params: dict[str, Any] = dict(n=n, max_tokens=cfg.max_new_tokens, skip_special_tokens=True)
        if cfg.temperature > 0:
            params.update(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
        else:
            params.update(temperature=0.0)
        return params

    def _recv(self, what: str, timeout: float | None):
        if not self._conn.poll(timeout):
            self.close()
            raise TimeoutError(f"vLLM engine: no answer to {what} within {timeout:.0f}s")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.exitcode if self._proc else None
            self.close()
            raise RuntimeError(f"vLLM engine process died during {what} (exit code {code})") from None
        if kind == "error":
            if what == "start":
                self.close()
            raise RuntimeError(f"vLLM engine failed during {what}:\n{payload}")
        return payload

    def load(self, path: str) -> None:
        if path == self.path and self._proc is not None and self._proc.is_alive():
            return
        self.close()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_vllm_server, args=(child, path, self.engine_kwargs()), daemon=False,
                           name="alphasweep-vllm")
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        self.tokenizer = load_tokenizer(path, padding_side="left")
        self._recv("start", self.cfg.timeout_s)
        self.path = path

    def generate(self, prompts: list[str], n: int = 1) -> list[list[str]]:
        if self._proc is None:
            raise RuntimeError("no checkpoint loaded")
        self._conn.send(("generate", list(prompts), self.sampling_params(n)))
        return self._recv("generate", self.cfg.timeout_s)

    def close(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = self.path = self.tokenizer = None
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
