"""HF-format checkpoints that double as Ray Train checkpoints.

A checkpoint directory is a plain `save_pretrained` model + tokenizer (so evaluation, vLLM and users
load it with `from_pretrained`) plus `trainer_state.pt` (optimizer, schedule, step, RNG) for resuming.
Full state dicts are gathered with `torch.distributed.checkpoint.state_dict`, so DDP and FSDP save alike.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

TRAINER_STATE = "trainer_state.pt"

# `torch.distributed.checkpoint` is imported where it is used: importing it costs ~0.6 s of CPU, which the
# Tune trial building the trainer and every worker would otherwise pay before the first training step.


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside a DDP / FSDP wrapper."""
    return getattr(model, "module", model)


def save_checkpoint(path: Path, model, tokenizer, optimizer, scheduler, step: int, counters: dict, rank: int) -> None:
    """Collective: every rank calls it; rank 0 writes the files."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=full)
    optim_state = get_optimizer_state_dict(model, optimizer, options=full)
    if rank != 0:
        return
    unwrap(model).save_pretrained(path, state_dict=model_state)
    tokenizer.save_pretrained(path)
    torch.save(
        {
            "optimizer": optim_state,
            "scheduler": scheduler.state_dict(),
            "step": step,
            "counters": counters,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        },
        path / TRAINER_STATE,
    )


def load_trainer_state(path: Path, model, optimizer, scheduler) -> tuple[int, dict]:
    """Restore optimizer, schedule and RNG from a checkpoint; returns (step, counters)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"],
                             options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state["step"], state["counters"]
