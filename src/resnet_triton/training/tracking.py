"""Run tracking: what a training run records for TensorBoard and MLflow (rank 0 only).

TensorBoard (on unless --no-tensorboard): event files in the run's folder, so that
`tensorboard --logdir <out>` shows, per epoch, the losses, val top-1, the learning
rates, AMP's loss scale and the throughput; the resolved config as text; and at the
end the training curves, the confusion matrix and the error-analysis grids as images.

MLflow (--mlflow: a folder, an sqlite: URI, or an http(s):// tracking server): the
resolved config as parameters, the same metrics per epoch, and at the end
the run's files as artifacts: figures, metrics.json, evaluation.json, config.yaml and
checkpoint.pt. A run resumed from last.pt goes on in the same MLflow run (its id
travels in last.pt); one stopped by --stop-after stays RUNNING until it finishes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from resnet_triton.spec import SpecError

# metrics.json's per-epoch keys -> TensorBoard tags (MLflow takes the keys themselves)
SCALARS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "val_top1": "top1/val",
    "lr_head": "lr/head", "lr_backbone": "lr/backbone", "loss_scale": "amp/loss_scale",
    "train_images_per_s": "throughput/train_images_per_s",
}  # fmt: skip
FIGURES = ("curves", "confusion_matrix", "mistakes", "examples")
ARTIFACTS = ("metrics.json", "evaluation.json", "config.yaml", "checkpoint.pt")
EXPERIMENT = "resnet-triton"


def mlflow_store(where: str) -> tuple[str, str | None]:
    """(tracking URI, where a new experiment keeps its artifacts) for --mlflow.

    A folder holds an SQLite database and the artifacts (MLflow 3 refuses its old
    file store); sqlite:///x.db keeps them beside the database; a server decides."""
    if where.startswith(("http://", "https://")):
        return where, None
    if where.startswith("sqlite:///"):
        database = Path(where.removeprefix("sqlite:///"))
        return where, (database.resolve().parent / "mlartifacts").as_uri()
    if ":" in where.split("/", 1)[0]:
        raise SpecError(
            f"--mlflow {where}: give a folder (e.g. mlruns), sqlite:///<file>.db, "
            "or an http(s):// tracking server"
        )
    folder = Path(where.removeprefix("file://")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


class Tracker:
    """Open at the start of a run (after a resume), fed each epoch, closed at its end."""

    def __init__(self, out: Path, tensorboard: bool, mlflow_uri: str | None,
                 run_id: str | None = None):  # fmt: skip
        self.out, self.writer, self.client, self.run_id = out, None, None, run_id
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out))
        if mlflow_uri:
            try:
                from mlflow import MlflowClient
            except ImportError:
                raise SpecError(
                    "--mlflow needs MLflow, which is not installed: "
                    "pip install 'resnet-triton[tracking]'"
                ) from None
            uri, artifacts = mlflow_store(mlflow_uri)
            self.client = MlflowClient(tracking_uri=uri)
            if self.run_id is None:
                experiment = self.client.get_experiment_by_name(EXPERIMENT)
                experiment_id = (
                    experiment.experiment_id if experiment
                    else self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
                )  # fmt: skip
                run = self.client.create_run(experiment_id, run_name=out.resolve().name)
                self.run_id = run.info.run_id

    def config(self, config: dict, text: str) -> None:
        """The resolved config: parameters (MLflow) and text (TensorBoard)."""
        if self.writer is not None:
            self.writer.add_text("config", "\n".join(f"    {line}" for line in text.splitlines()))
        if self.client is not None:
            from mlflow.entities import Param

            logged = self.client.get_run(self.run_id).data.params
            params = [Param(k, json.dumps(v) if isinstance(v, list | tuple) else str(v))
                      for k, v in config.items() if k not in logged]  # fmt: skip
            self.client.log_batch(self.run_id, params=params)

    def epoch(self, record: dict) -> None:
        step = record["epoch"]
        if self.writer is not None:
            for key, tag in SCALARS.items():
                self.writer.add_scalar(tag, record[key], step)
            self.writer.flush()
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(key, float(record[key]), now, step) for key in SCALARS]
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, epoch: int) -> None:
        """The figures as images, the run's files as artifacts; the MLflow run FINISHED."""
        if self.writer is not None:
            for name in FIGURES:
                with Image.open(self.out / f"{name}.png") as image:
                    pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
                self.writer.add_image(f"figures/{name}", pixels, epoch, dataformats="HWC")
            self.writer.flush()
        if self.client is not None:
            for name in [*(f"{f}.png" for f in FIGURES), *ARTIFACTS]:
                self.client.log_artifact(self.run_id, str(self.out / name))
            self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, "FAILED")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def tracked(cfg, out: Path, state, is_main: bool) -> Iterator[Tracker | None]:
    """A Tracker for this run's rank 0 (None elsewhere, or with nothing to track); its
    MLflow run id kept in `state` (the loop's, saved in last.pt); FAILED on an error."""
    if not is_main or not (cfg.tensorboard or cfg.mlflow):
        yield None
        return
    tracker = Tracker(out, cfg.tensorboard, cfg.mlflow, state.mlflow_run_id)
    state.mlflow_run_id = tracker.run_id
    tracker.config(cfg.as_dict(), cfg.to_yaml())
    try:
        yield tracker
    except BaseException:
        tracker.fail()
        raise
    finally:
        tracker.close()
