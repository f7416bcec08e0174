"""The training loop: one process, or one of several under torchrun.

Outputs in `cfg.out` (rank 0 writes, the others only compute):
  checkpoint.pt   the best epoch by `cfg.monitor` (EMA weights when EMA is on),
                  with the spec; what `resnet-triton build` takes
  last.pt         the last epoch with optimizer, schedule, scaler, EMA and
                  loop state, for --resume
  metrics.json    every epoch (its precision included); config.yaml the resolved configuration
  evaluation.json per-class precision/recall/F1 of the best checkpoint on the
                  test split (val when there is none)
  augmentation.png training images as augmented, written before the first epoch
  curves.png, confusion_matrix.png
  events.out.tfevents.*  TensorBoard's (tracking.py; --no-tensorboard: none), and
                  with --mlflow URI the same in an MLflow run

Reproducibility: every epoch reseeds Python, NumPy and PyTorch (and the
shuffling and worker seeds) from (seed, epoch, rank), so a resumed run draws
exactly the random numbers an uninterrupted one would, on any number of
processes; no generator state has to travel in the checkpoint.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from resnet_triton.resnet import (
    CheckpointError,
    build_model,
    read_torch_file,
    save_checkpoint,
)
from resnet_triton.spec import ModelSpec, Preprocessing, SpecError
from resnet_triton.training import (
    distributed,
    evaluation,
    extra_data,
    normalization,
    precision,
    pruning,
    report,
    strategy,
    teacher,
    tracking,
)
from resnet_triton.training.config import TrainConfig
from resnet_triton.training.loaders import eval_loader, predict, seed_epoch, train_loader
from resnet_triton.training.optim import Schedule, build_ema, build_loss, build_optimizer


@dataclass
class LoopState:
    """What besides weights and optimizer a resumed run needs."""

    epoch: int = 0
    best: dict | None = None
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    mlflow_run_id: str | None = None  # a resumed run goes on in the same MLflow run


def improved(cfg: TrainConfig, record: dict, best: dict | None) -> bool:
    if best is None:
        return True
    if cfg.monitor == "val_loss":
        return record["val_loss"] < best["val_loss"]
    return record["val_top1"] > best["val_top1"]


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: distributed.Context):
        self.cfg, self.ctx = cfg, ctx
        if cfg.batch_size % ctx.world_size:
            raise SpecError(
                f"--batch-size {cfg.batch_size} must divide by the {ctx.world_size} processes"
            )
        if cfg.class_balance == "sampler" and ctx.distributed:
            raise SpecError("--class-balance sampler needs one process; use loss under torchrun")
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        prep = Preprocessing(resize_size=cfg.resize_size, crop_size=cfg.crop_size)
        self.splits, self.extra = extra_data.run_splits(cfg, prep, ctx.is_main, self.log)
        if cfg.normalize == "data":  # the training split's mean and std, into the spec
            prep = normalization.from_training_split(self.splits, prep, cfg.augmentation, self.log)
        self.spec = ModelSpec(
            labels=tuple(self.splits.classes),
            arch=cfg.arch,
            head_dropout=cfg.head_dropout,
            head=cfg.head,
            preprocessing=prep,
        )
        memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.memory_format = memory
        if cfg.prune_from:  # the pruned checkpoint's model, with the widths in the spec
            self.spec, model = pruning.pruned_start(cfg, self.spec, self.log)
        else:
            model = build_model(self.spec, cfg.weights)
        self.model = model.to(ctx.device, memory_format=memory)
        self.optimizer = build_optimizer(strategy.parameter_groups(self.model, cfg), cfg)
        self.micro_batch = cfg.batch_size // ctx.world_size
        self.data = train_loader(self.splits.train, cfg, ctx, self.micro_batch)
        self.steps_per_epoch = max(1, len(self.data.loader) // cfg.accumulate)
        self.schedule = Schedule(self.optimizer, cfg, self.steps_per_epoch)
        self.precision = precision.resolve(cfg.amp, ctx.device)  # says why in fit
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision.dtype == torch.float16)
        self.ema = build_ema(self.model, cfg)
        self.loss_fn = build_loss(cfg, self.splits.train, ctx.device)
        self.teacher = None  # distillation: a frozen model whose answers are targets too
        if cfg.teacher:
            self.teacher = teacher.load_teacher(cfg.teacher, self.spec, ctx.device)
        self.state = LoopState()
        self.grad_norms: list[float] = []  # this epoch's, one per optimizer step
        self.net = self.model  # what forward goes through: DDP-wrapped under torchrun

    def log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message)

    # -- checkpoints -------------------------------------------------------

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def save_last(self) -> None:
        training = {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "loop": vars(self.state),
        }
        save_checkpoint(
            self.out / "last.pt",
            self.model,
            self.spec,
            metrics=self.state.history[-1],
            config=self.cfg.as_dict(),
            held_out=self.splits.held_out_fingerprint,
            training=training,
        )

    def resume(self, path: Path) -> None:
        payload = read_torch_file(path) if path.is_file() else None
        if not isinstance(payload, dict) or "training" not in payload:
            raise CheckpointError(f"--resume {path} is not a last.pt written by this trainer")
        saved = ModelSpec.from_dict(payload["spec"])
        same = ("arch", "labels", "widths", "head")
        if any(getattr(saved, name) != getattr(self.spec, name) for name in same):
            raise CheckpointError(
                f"--resume {path} is {saved.describe()}; this run is {self.spec.describe()}"
            )
        self.model.load_state_dict(payload["state_dict"])
        training = payload["training"]
        self.optimizer.load_state_dict(training["optimizer"])
        self.schedule.load_state_dict(training["schedule"])
        self.scaler.load_state_dict(training["scaler"])
        if self.ema is not None and training["ema"] is not None:
            self.ema.load_state_dict(training["ema"])
        self.state = LoopState(**training["loop"])
        self.log(f"resumed from {path} after epoch {self.state.epoch}")

    # -- one epoch ---------------------------------------------------------

    def set_stage(self, stage: int) -> None:
        trainable = strategy.apply_stage(self.model, self.cfg, stage)
        blocks = strategy.trainable_blocks(self.cfg, stage)
        what = "all layers" if blocks is None else " + ".join([*blocks, strategy.HEAD])
        self.log(f"stage {stage + 1}: training {what} ({trainable:,} parameters)")
        if self.ctx.distributed:
            # DDP records which parameters need gradients when it wraps the model.
            device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=device_ids)

    def step(self, images: torch.Tensor, labels: torch.Tensor, stepping: bool) -> float:
        """One micro-batch: forward, backward, and the optimizer step when `stepping`."""
        cfg = self.cfg
        images = images.to(self.ctx.device, memory_format=self.memory_format)
        labels = labels.to(self.ctx.device)
        # Under DDP, gradients are all-reduced only on the micro-batch that steps.
        sync = nullcontext() if stepping or not self.ctx.distributed else self.net.no_sync()
        with sync:
            with torch.autocast(self.ctx.device.type, self.precision.dtype, self.precision.enabled):
                logits = self.net(images)
                loss = self.loss_fn(logits, labels)
                if self.teacher is not None:
                    with torch.no_grad():
                        taught = self.teacher(images)
                    loss = teacher.blend(loss, logits, taught, cfg)
            self.scaler.scale(loss / cfg.accumulate).backward()
        if stepping:
            # The norm before clipping (inf: measured, not clipped), logged as grad_norm.
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.grad is not None],
                cfg.clip_grad_norm or float("inf"),
            )
            self.grad_norms.append(float(norm))
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            # With fp16, GradScaler skips the step whose gradients overflowed and lowers
            # the scale: the schedule and the EMA then wait for a step that happened.
            if self.scaler.get_scale() >= scale:
                self.schedule.after_step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
        return loss.item()

    def train_epoch(self, epoch: int, stage: int) -> tuple[float, int]:
        cfg = self.cfg
        strategy.set_train_mode(self.model, cfg, stage)
        self.data.start_epoch(cfg.seed, epoch, self.ctx.rank)
        micro_steps = self.steps_per_epoch * cfg.accumulate  # whole optimizer steps only
        losses, seen, self.grad_norms = [], 0, []
        bar = tqdm(
            self.data.loader,
            total=micro_steps,
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=None if self.ctx.is_main else True,
        )
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, labels) in enumerate(bar):
            if i == micro_steps:
                break
            stepping = (i + 1) % cfg.accumulate == 0
            loss = self.step(images, labels, stepping)
            losses.append(loss)
            seen += len(images)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        mean = float(np.mean(losses)) if losses else float("nan")
        return distributed.mean_over_ranks(self.ctx, mean, len(losses)), seen * self.ctx.world_size

    def learning_rates(self) -> dict:
        """lr_head, lr_backbone (layer4's with --layer-decay) and each other group's rate."""
        rates = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        stages = {f"lr_{n}": r for n, r in rates.items() if n in (*strategy.DEPTH, "stem")}
        backbone = rates.get("backbone", rates.get("layer4"))
        return {"lr_head": rates["head"], "lr_backbone": backbone, **stages}

    def grad_norm_figures(self) -> dict:
        """The epoch's gradient norms (all parameters, before clipping), this rank's steps;
        not those of fp16 steps that overflowed, which GradScaler skipped."""
        norms = [n for n in self.grad_norms if np.isfinite(n)] or [float("nan")]
        return {"grad_norm": float(np.mean(norms)), "grad_norm_max": float(np.max(norms))}

    def evaluate(self, model: nn.Module, dataset) -> np.ndarray:
        """Probabilities for every image of `dataset`, in dataset order, on every rank."""
        distributed.broadcast_buffers(self.ctx, model)
        probs = predict(
            model,
            eval_loader(dataset, self.ctx, self.micro_batch, self.cfg.workers),
            self.ctx.device,
        )
        parts = distributed.gather(self.ctx, probs)
        full = np.empty((len(dataset), self.spec.num_classes), dtype=np.float32)
        for rank, part in enumerate(parts):
            full[rank :: self.ctx.world_size] = part
        return full

    # -- the run -----------------------------------------------------------

    def fit(self) -> dict:
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(cfg.to_yaml())
            for line in report.describe_data(self.splits, cfg, ctx):
                self.log(line)
            self.precision.say()
            grid = report.augmentation_grid(self.splits.train, self.spec, self.out)
            self.log(f"augmentation: {grid}, training images as the augmentation draws them")
        if cfg.resume:
            self.resume(Path(cfg.resume))
        with tracking.tracked(cfg, self.out, self.state, ctx.is_main) as tracker:
            return self._epochs(tracker)

    def _epochs(self, tracker: tracking.Tracker | None) -> dict:
        cfg, ctx = self.cfg, self.ctx
        targets = np.array(self.splits.val.targets)
        first = self.state.epoch + 1
        last = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, first + cfg.stop_after - 1)
        stage = None
        epochs = tqdm(range(first, last + 1), desc="epochs", disable=None if ctx.is_main else True)
        for epoch in epochs:
            seed_epoch(cfg, epoch, ctx.rank)
            if strategy.stage_for_epoch(cfg, epoch) != stage:
                stage = strategy.stage_for_epoch(cfg, epoch)
                self.set_stage(stage)
            start = time.perf_counter()
            train_loss, images = self.train_epoch(epoch, stage)
            train_seconds = time.perf_counter() - start
            probs = self.evaluate(self._eval_model(), self.splits.val)
            picked = probs[np.arange(len(targets)), targets]
            record = {
                "epoch": epoch,
                "stage": stage + 1,
                **self.learning_rates(),
                "train_loss": train_loss,
                **self.grad_norm_figures(),
                "val_loss": float(-np.mean(np.log(picked + 1e-12))),
                "val_top1": float(np.mean(probs.argmax(1) == targets)),
                "train_images_per_s": round(images / train_seconds, 1),
                "seconds": round(time.perf_counter() - start, 2),
                "loss_scale": self.scaler.get_scale(),  # 1.0 unless fp16 (CUDA)
                "precision": self.precision.name,  # what --amp (or the machine) chose
            }
            self.schedule.after_epoch(record)
            self.state.epoch = epoch
            self.state.history.append(record)
            better = improved(cfg, record, self.state.best)
            if better:
                self.state.best, self.state.bad_epochs = record, 0
            else:
                self.state.bad_epochs += 1
            self.log(
                f"epoch {epoch}/{cfg.epochs}: train loss {record['train_loss']:.4f}, "
                f"val loss {record['val_loss']:.4f}, val top-1 {record['val_top1']:.4f} "
                f"({record['seconds']:.0f} s, {record['train_images_per_s']:.0f} img/s)"
                + (" *" if better else "")
            )
            if ctx.is_main:
                self._write_epoch(record, better, tracker)
            if self._stopped_early():
                self.log(f"early stop: {cfg.monitor} did not improve for {cfg.patience} epochs")
                break
        result = {"best": self.state.best, "history": self.state.history}
        finished = self.state.epoch == cfg.epochs or self._stopped_early()
        if finished and ctx.is_main:  # not after --stop-after: the run goes on later
            result["evaluation"] = self.final_evaluation()
            if tracker is not None:
                tracker.finish(self.state.epoch)
        return result

    def _write_epoch(self, record: dict, better: bool, tracker: tracking.Tracker | None) -> None:
        """Rank 0's outputs of an epoch: the best checkpoint, last.pt, metrics, tracking."""
        if better:
            save_checkpoint(
                self.out / "checkpoint.pt",
                self._eval_model(),
                self.spec,
                metrics=record,
                config=self.cfg.as_dict(),
                held_out=self.splits.held_out_fingerprint,  # build and calibrate check it
            )
        self.save_last()
        self._write_metrics()
        if tracker is not None:
            tracker.epoch(record)

    def _stopped_early(self) -> bool:
        return bool(self.cfg.patience) and self.state.bad_epochs >= self.cfg.patience

    def _write_metrics(self) -> None:
        metrics = {"best": self.state.best, "history": self.state.history}
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        report.plot_curves(self.state.history, self.out / "curves.png")

    def probabilities(self, model: nn.Module, dataset) -> np.ndarray:
        loader = DataLoader(dataset, batch_size=self.micro_batch, num_workers=self.cfg.workers)
        with torch.no_grad():
            return predict(model, loader, self.ctx.device)

    def final_evaluation(self) -> dict:
        return evaluation.final_evaluation(self)


def run(cfg: TrainConfig) -> dict:
    """Train with `cfg` in this process (one of several under torchrun)."""
    ctx = distributed.setup()
    try:
        return Trainer(cfg, ctx).fit()
    finally:
        distributed.teardown(ctx)
