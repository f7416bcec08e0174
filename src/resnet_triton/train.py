"""Fine-tune a torchvision ResNet on an ImageFolder dataset.

Strategies:
  linear-probe  backbone frozen (BatchNorm statistics included), only the new
                head trains. Use it with little data (tens of images per
                class) or as a fast baseline.
  full          every parameter trains. Use it with hundreds of images per
                class or more, or with data far from ImageNet, and always
                when starting from random weights.

The best epoch by validation top-1 is saved as `<out>/checkpoint.pt` with the
model spec, labels, metrics and the resolved configuration; per-epoch
metrics go to `<out>/metrics.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from resnet_triton.data import load_splits
from resnet_triton.resnet import build_model, save_checkpoint
from resnet_triton.spec import ARCHITECTURES, ModelSpec, Preprocessing, SpecError, check_choice

STRATEGIES = ("linear-probe", "full")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str = "artifacts/train"
    arch: str = "resnet50"
    weights: str = "imagenet"
    strategy: str = "full"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    resize_size: int = 256
    crop_size: int = 224
    hflip: bool = True
    workers: int = 2
    seed: int = 0
    amp: bool = True

    def validate(self) -> None:
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("architecture", self.arch, ARCHITECTURES)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise SpecError(f"--{name.replace('_', '-')} must be >= 1")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TrainConfig(data="")
    parser.add_argument("--data", required=True, help="folder with train/<class>/ and val/<class>/")
    parser.add_argument("--out", default=d.out, help="output folder (default %(default)s)")
    parser.add_argument("--arch", default=d.arch, help=f"one of {', '.join(ARCHITECTURES)}")
    parser.add_argument(
        "--weights",
        default=d.weights,
        help="imagenet (torchvision, needs network once), none (random init) or a state_dict path",
    )
    parser.add_argument("--strategy", default=d.strategy, help=f"one of {', '.join(STRATEGIES)}")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    parser.add_argument("--resize-size", type=int, default=d.resize_size)
    parser.add_argument("--crop-size", type=int, default=d.crop_size)
    parser.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=d.hflip,
        help="random horizontal flips (turn off for text, digits, asymmetric classes)",
    )
    parser.add_argument("--workers", type=int, default=d.workers, help="data loader processes")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=d.amp,
        help="mixed precision: fp16 with loss scaling on CUDA, bf16 on CPU",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    cfg.validate()
    return cfg


def apply_strategy(model: nn.Module, strategy: str) -> list[nn.Parameter]:
    """Freeze what the strategy keeps fixed; return the parameters to train."""
    for name, param in model.named_parameters():
        param.requires_grad = strategy == "full" or name.startswith("fc.")
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: nn.Module, strategy: str) -> None:
    model.train()
    if strategy == "linear-probe":
        # A frozen backbone keeps its BatchNorm statistics too.
        for name, module in model.named_children():
            if name != "fc":
                module.eval()


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Softmax probabilities (N, num_classes) in float32, the dtype that is exported."""
    model.eval()
    out = []
    for images, _ in loader:
        images = images.to(device, memory_format=torch.channels_last)
        out.append(torch.softmax(model(images).float(), dim=1).cpu())
    return torch.cat(out).numpy()


def run(cfg: TrainConfig) -> dict:
    """Train, keep the best epoch; returns the final metrics."""
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prep = Preprocessing(resize_size=cfg.resize_size, crop_size=cfg.crop_size)
    train_set, val_set = load_splits(Path(cfg.data), prep, cfg.hflip)
    spec = ModelSpec(labels=tuple(train_set.classes), arch=cfg.arch, preprocessing=prep)

    model = build_model(spec, cfg.weights)
    params = apply_strategy(model, cfg.strategy)
    model.to(device, memory_format=torch.channels_last)

    loader_args = {"num_workers": cfg.workers, "persistent_workers": cfg.workers > 0}
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(train_set) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
        **loader_args,
    )
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, **loader_args)
    targets = np.array(val_set.targets)

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * len(train_loader)
    warmup_steps = min(total_steps, max(1, round(cfg.warmup_epochs * len(train_loader))))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(warmup_steps, total_steps)
    )
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss()

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    print(
        f"training {cfg.arch} ({cfg.strategy}, weights={cfg.weights}) on {device}: "
        f"{len(train_set)} train / {len(val_set)} val images, {spec.num_classes} classes, "
        f"{sum(p.numel() for p in params):,} trainable parameters"
    )
    history, best = [], None
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        set_train_mode(model, cfg.strategy)
        losses = []
        # disable=None: bars on a terminal, none in CI logs.
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None)
        for images, labels in bar:
            images = images.to(device, memory_format=torch.channels_last)
            labels = labels.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
                loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")

        probs = predict(model, val_loader, device)
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "val_loss": float(-np.mean(np.log(probs[np.arange(len(targets)), targets] + 1e-12))),
            "val_top1": float(np.mean(probs.argmax(1) == targets)),
            "seconds": round(time.perf_counter() - start, 2),
        }
        history.append(record)
        print(
            f"epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f}, "
            f"val loss {record['val_loss']:.4f}, val top-1 {record['val_top1']:.4f} "
            f"({record['seconds']:.0f} s)"
        )
        if best is None or record["val_top1"] > best["val_top1"]:
            best = record
            save_checkpoint(
                out / "checkpoint.pt",
                model,
                spec,
                metrics=record,
                config=dataclasses.asdict(cfg),
            )
    metrics = {"best": best, "history": history}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(
        f"best val top-1 {best['val_top1']:.4f} at epoch {best['epoch']}: {out / 'checkpoint.pt'}"
    )
    return metrics


def main(args: argparse.Namespace) -> int:
    run(config_from_args(args))
    return 0
