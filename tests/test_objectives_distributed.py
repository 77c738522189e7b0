"""A 2-worker DDP or FSDP step with `objective_loss` gives the gradient of the mean of the shards' losses.

Each rank normalises by its own selected tokens (and a quantile cut is its own shard's), so DDP's gradient
average is the mean over shards of each shard's loss gradient, not the gradient of one loss over the batch.
"""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from alphasweep.objectives import objective_loss, parse_objective

WORLD = 2
VOCAB = 6  # small, with spread-out logits below, so that p^8 still carries gradient
OBJECTIVES = ["GeneralFamily-8", "TopQuantileLogP-0.3", "original"]


def _batch():
    """4 sequences of 12 tokens, masks of uneven length, -100 where masked off (as a collator leaves it)."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (4, 12), generator=generator)
    labels = torch.randint(0, VOCAB, (4, 12), generator=generator)
    mask = torch.arange(12) >= torch.tensor([[2], [5], [7], [3]])
    return tokens, labels.masked_fill(~mask, -100), mask


def _shard(rank, *tensors):
    size = tensors[0].shape[0] // WORLD
    return [t[rank * size : (rank + 1) * size] for t in tensors]


def _worker(rank, rendezvous, strategy):
    # A file rendezvous: no TCP store owned by rank 0 that could go away while rank 1 still tears down.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 16), torch.nn.Tanh(), torch.nn.Linear(16, VOCAB))
    with torch.no_grad():
        model[2].weight.mul_(8)
    reference = copy.deepcopy(model)
    if strategy == "ddp":
        wrapped = DistributedDataParallel(model)
    else:
        wrapped = fully_shard(model)  # FSDP2: each parameter a DTensor sharded over the 2 ranks
    tokens, labels, mask = _batch()
    for name in OBJECTIVES:
        objective = parse_objective(name)
        wrapped.zero_grad()
        shard_tokens, shard_labels, shard_mask = _shard(rank, tokens, labels, mask)
        objective_loss(wrapped(shard_tokens), shard_labels, shard_mask, objective).backward()

        reference.zero_grad()
        for shard in range(WORLD):
            shard_tokens, shard_labels, shard_mask = _shard(shard, tokens, labels, mask)
            (objective_loss(reference(shard_tokens), shard_labels, shard_mask, objective) / WORLD).backward()
        for got, want in zip(model.parameters(), reference.parameters(), strict=True):
            assert want.grad.abs().max() > 1e-3, name
            grad = got.grad.full_tensor() if isinstance(got.grad, DTensor) else got.grad
            torch.testing.assert_close(grad, want.grad, atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    dist.barrier()  # neither rank tears gloo down while the other is still in a collective
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_gradient_is_mean_of_shard_gradients(tmp_path, strategy):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), strategy), nprocs=WORLD, join=True)
