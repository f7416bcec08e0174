"""The training loop's data: seeded loaders for one process or one torchrun shard,
and prediction in the dtype that is exported."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    Subset,
    WeightedRandomSampler,
)

from resnet_triton.data import class_counts, image_folder
from resnet_triton.resnet import load_checkpoint
from resnet_triton.training import distributed
from resnet_triton.training.config import TrainConfig


def seed_epoch(cfg: TrainConfig, epoch: int, rank: int) -> None:
    seed = cfg.seed + 1000 * epoch + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainLoader:
    """The training split's loader and the generators reseeded every epoch."""

    loader: DataLoader
    sampler: Sampler
    shuffle: torch.Generator  # the order of the images
    workers: torch.Generator  # the workers' augmentation

    def start_epoch(self, seed: int, epoch: int, rank: int) -> None:
        self.shuffle.manual_seed(seed + epoch)
        self.workers.manual_seed(seed + 1000 * epoch + rank)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)


def train_loader(
    train, cfg: TrainConfig, ctx: distributed.Context, micro_batch: int
) -> TrainLoader:
    shuffle = torch.Generator()
    if ctx.distributed:
        sampler = DistributedSampler(train, ctx.world_size, ctx.rank, seed=cfg.seed, drop_last=True)
    elif cfg.class_balance == "sampler":
        counts = class_counts(train)
        weights = 1.0 / counts[np.array(train.targets)]
        sampler = WeightedRandomSampler(weights, len(train), replacement=True, generator=shuffle)
    else:
        sampler = RandomSampler(train, generator=shuffle)
    workers = torch.Generator()
    loader = DataLoader(
        train,
        batch_size=micro_batch,
        sampler=sampler,
        drop_last=len(train) >= micro_batch * ctx.world_size,
        num_workers=cfg.workers,
        generator=workers,  # seeds the workers' augmentation
        pin_memory=ctx.device.type == "cuda",
    )
    return TrainLoader(loader, sampler, shuffle, workers)


def eval_loader(dataset, ctx: distributed.Context, micro_batch: int, workers: int) -> DataLoader:
    """This process's shard: every world_size-th image. Results are gathered, so metrics
    cover the whole split exactly once."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    return DataLoader(shard, batch_size=micro_batch, num_workers=workers)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Softmax probabilities (N, num_classes) in float32, the dtype that is exported."""
    model.eval()
    out = []
    for images, _ in loader:
        images = images.to(device, memory_format=torch.channels_last)
        out.append(torch.softmax(model(images).float(), dim=1).cpu())
    return torch.cat(out).numpy()


def predict_folder(checkpoint, folder, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities, class indices) of a checkpoint on an ImageFolder, through
    the eval preprocessing."""
    spec, model, _ = load_checkpoint(checkpoint)
    dataset = image_folder(folder, spec.preprocessing, evaluate=True)
    loader = DataLoader(dataset, batch_size=spec.max_batch_size)
    with torch.no_grad():
        return predict(model.to(device), loader, device), np.array(dataset.targets)
