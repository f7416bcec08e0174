"""A training run as `resnet-triton train` makes it, that also leaves what
test_distributed.py compares: `rank<r>.pt` in --out with this rank's parameters before
training, after its first optimizer step and at the end, its train losses and, per
epoch, the indices of the training images its steps read.

    torchrun --standalone --nproc_per_node=2 tests/training/ddp_run.py TRAIN-FLAGS...
    python tests/training/ddp_run.py --global-order 2 TRAIN-FLAGS...

--global-order N: one process reading the images in the order N ranks read them
together, micro-batch by micro-batch (rank 0's first micro-batch, rank 1's first, ...),
so that `--batch-size B/N --accumulate N*A` takes the optimizer steps that N ranks
take with `--batch-size B --accumulate A`.
--no-allreduce: DDP replaced by the bare model, so each rank steps on its own gradients:
the defect that the comparison must catch.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from resnet_triton.training import distributed, loaders, loop, options


def shard_order(dataset, world: int, seed: int, epoch: int) -> list[list[int]]:
    """Each rank's indices for `epoch`, drawn as the loop draws them (loaders.train_loader)."""
    shards = []
    for rank in range(world):
        sampler = DistributedSampler(dataset, world, rank, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        shards.append(list(sampler))
    return shards


class GlobalOrder(DistributedSampler):
    """The ranks' shards interleaved by micro-batch: what N ranks read, in one process."""

    def __init__(self, dataset, world: int, seed: int, micro_batch: int):
        super().__init__(dataset, world, 0, seed=seed, drop_last=True)
        self.micro_batch = micro_batch
        self.batches = self.num_samples // micro_batch

    def __iter__(self):
        shards = shard_order(self.dataset, self.num_replicas, self.seed, self.epoch)
        for k in range(self.batches):
            for shard in shards:
                yield from shard[k * self.micro_batch : (k + 1) * self.micro_batch]

    def __len__(self) -> int:
        return self.batches * self.micro_batch * self.num_replicas


def global_order_loader(world: int):
    def train_loader(train, cfg, ctx, micro_batch):
        sampler = GlobalOrder(train, world, cfg.seed, micro_batch)
        shuffle, workers = torch.Generator(), torch.Generator()
        loader = DataLoader(train, batch_size=micro_batch, sampler=sampler, drop_last=True,
                            num_workers=cfg.workers, generator=workers)  # fmt: skip
        return loaders.TrainLoader(loader, sampler, shuffle, workers)

    return train_loader


class BareModel(nn.Module):
    """DDP's interface without its gradient all-reduce."""

    def __init__(self, module: nn.Module, device_ids=None):
        super().__init__()
        self.module = module

    def forward(self, images):
        return self.module(images)

    def no_sync(self):
        return contextlib.nullcontext()


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters()}


class RecordingTrainer(loop.Trainer):
    """The loop's Trainer; the training split's reads are recorded by index."""

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.initial = parameters(self.model)
        self.first_step: dict[str, torch.Tensor] | None = None  # after the first optimizer step
        self.reads: dict[int, list[int]] = {}
        self.stepped: dict[int, int] = {}
        train, reads = self.splits.train, self.reads
        base = type(train)

        def getitem(dataset, index):
            if reads:  # not before the first epoch: rank 0's augmentation grid
                reads[max(reads)].append(int(index))
            return base.__getitem__(dataset, index)

        # Dunder lookup goes through the type, so the split gets a recording subclass.
        train.__class__ = type(f"Recording{base.__name__}", (base,), {"__getitem__": getitem})

    def train_epoch(self, epoch: int, stage: int):
        self.reads[epoch], self.stepped[epoch] = [], 0
        return super().train_epoch(epoch, stage)

    def step(self, images, labels, stepping):
        self.stepped[max(self.stepped)] += len(images)
        loss = super().step(images, labels, stepping)
        if stepping and self.first_step is None:
            self.first_step = parameters(self.model)
        return loss

    def seen(self) -> dict[int, list[int]]:
        """Per epoch, the images that went through a step (a loader may read one more
        batch than the loop steps on)."""
        return {e: self.reads[e][: self.stepped[e]] for e in self.reads}


def main(argv: list[str]) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--global-order", type=int, default=0)
    own.add_argument("--no-allreduce", action="store_true")
    flags, rest = own.parse_known_args(argv)
    cfg = options.config_from_args(options.get_args_parser().parse_args(rest))
    if flags.global_order:
        loop.train_loader = global_order_loader(flags.global_order)
    if flags.no_allreduce:
        loop.DistributedDataParallel = BareModel
    ctx = distributed.setup()
    try:
        trainer = RecordingTrainer(cfg, ctx)
        trainer.fit()
        record = {
            "initial": trainer.initial,
            "first_step": trainer.first_step,
            "parameters": parameters(trainer.model),
            # what the last evaluation ran: BatchNorm's running statistics included
            "evaluated": {n: b.detach().cpu().clone() for n, b in trainer.model.named_buffers()},
            "train_loss": [epoch["train_loss"] for epoch in trainer.state.history],
            "seen": trainer.seen(),
        }
        torch.save(record, Path(cfg.out) / f"rank{ctx.rank}.pt")
    finally:
        distributed.teardown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
