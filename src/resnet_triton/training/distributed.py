"""Process group set-up for torchrun: NCCL on GPUs, gloo on CPU.

One node:    torchrun --nproc_per_node=4 -m resnet_triton train --data DIR ...
Many nodes:  torchrun --nnodes=2 --node_rank=<0|1> --nproc_per_node=8 \\
                 --rdzv_backend=c10d --rdzv_endpoint=<host0>:29500 \\
                 -m resnet_triton train --data DIR ...
Without torchrun (no WORLD_SIZE in the environment) training is one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> Context:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size == 1:
        return Context(device=torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(ctx: Context, value: float, count: int) -> float:
    """Sample-weighted mean of a per-rank average."""
    if not ctx.distributed:
        return value
    totals = torch.tensor([value * count, float(count)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(totals)
    return (totals[0] / totals[1]).item()


def gather(ctx: Context, obj):
    """Every rank's object, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(ctx: Context, model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank.

    DDP averages the gradients, so the ranks' weights stay equal, but each rank's forward
    passes update its own running statistics. Before an evaluation they are made rank 0's,
    so that every rank's share of the metrics comes from the model rank 0 saves.
    """
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)
