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

Both are side channels: an error of either is said once and switches it off for the
rest of the run, which goes on (Tracker._safely); without the tracking extra there are
no event files, said once too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from resnet_triton.spec import SpecError

# metrics.json's per-epoch keys -> TensorBoard tags (MLflow takes the keys themselves)
SCALARS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "val_top1": "top1/val",
    "lr_head": "lr/head", "lr_backbone": "lr/backbone", "loss_scale": "amp/loss_scale",
    "train_images_per_s": "throughput/train_images_per_s",
    "grad_norm": "grad/norm_mean", "grad_norm_max": "grad/norm_max",
}  # fmt: skip
FIGURES = ("curves", "confusion_matrix", "mistakes", "examples", "augmentation")
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


# MLflow's client retries a lost server for about 4 minutes a request (7 retries, the
# backoff doubling from 2 s) while the other ranks wait at the next all-reduce; tracking
# gets seconds instead, unless the environment sets these itself.
MLFLOW_PATIENCE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
SINKS = {"TensorBoard": "writer", "MLflow": "client"}


@contextlib.contextmanager
def mlflow_patience() -> Iterator[None]:
    added = {k: v for k, v in MLFLOW_PATIENCE.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


def summary_writer(out: Path):
    """TensorBoard's writer, or None where tensorboard (the tracking extra) is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warn("no TensorBoard event files: tensorboard is not installed "
             "(pip install 'resnet-triton[tracking]', or --no-tensorboard)")  # fmt: skip
        return None
    try:
        return SummaryWriter(str(out))
    except Exception as exc:  # the folder unwritable: a side channel never stops the run
        warn(f"no TensorBoard event files: {type(exc).__name__}: {exc}")
        return None


class Tracker:
    """Open at the start of a run (after a resume), fed each epoch, closed at its end.

    A side channel: an error of TensorBoard or MLflow (a server gone, a disk full) is said
    once and ends that one for the rest of the run; training goes on, on every rank."""

    def __init__(self, out: Path, tensorboard: bool, mlflow_uri: str | None,
                 run_id: str | None = None):  # fmt: skip
        self.out, self.writer, self.client, self.run_id = out, None, None, run_id
        if tensorboard:
            self.writer = summary_writer(out)
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
                self._safely("MLflow", lambda: self._start_run(artifacts))

    def _start_run(self, artifacts: str | None) -> None:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = (
            experiment.experiment_id if experiment
            else self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
        )  # fmt: skip
        run = self.client.create_run(experiment_id, run_name=self.out.resolve().name)
        self.run_id = run.info.run_id

    def _safely(self, sink: str, action: Callable[[], None]) -> None:
        """`action` on `sink` (TensorBoard, MLflow) while it works: its first error is
        said once and switches it off."""
        if getattr(self, SINKS[sink]) is None:
            return
        try:
            with mlflow_patience():
                action()
        except Exception as exc:  # whatever the library raises: a side channel never stops
            setattr(self, SINKS[sink], None)
            said = " ".join(str(exc).split())
            warn(f"{sink} tracking stopped for the rest of this run, training goes on: "
                 f"{type(exc).__name__}: {said[:300]}")  # fmt: skip

    def config(self, config: dict, text: str) -> None:
        """The resolved config: parameters (MLflow) and text (TensorBoard)."""
        lines = "\n".join(f"    {line}" for line in text.splitlines())
        self._safely("TensorBoard", lambda: self.writer.add_text("config", lines))
        self._safely("MLflow", lambda: self._params(config))

    def _params(self, config: dict) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        params = [Param(k, json.dumps(v) if isinstance(v, list | tuple) else str(v))
                  for k, v in config.items() if k not in logged]  # fmt: skip
        self.client.log_batch(self.run_id, params=params)

    def epoch(self, record: dict) -> None:
        self._safely("TensorBoard", lambda: self._scalars(record))
        self._safely("MLflow", lambda: self._metrics(record))

    def _scalars(self, record: dict) -> None:
        for key, tag in SCALARS.items():
            self.writer.add_scalar(tag, record[key], record["epoch"])
        self.writer.flush()

    def _metrics(self, record: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(record[key]), now, record["epoch"]) for key in SCALARS]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, epoch: int) -> None:
        """The figures as images, the run's files as artifacts; the MLflow run FINISHED."""
        self._safely("TensorBoard", lambda: self._figures(epoch))
        self._safely("MLflow", self._artifacts)

    def _figures(self, epoch: int) -> None:
        for name in FIGURES:
            with Image.open(self.out / f"{name}.png") as image:
                pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
            self.writer.add_image(f"figures/{name}", pixels, epoch, dataformats="HWC")
        self.writer.flush()

    def _artifacts(self) -> None:
        for name in [*(f"{f}.png" for f in FIGURES), *ARTIFACTS]:
            self.client.log_artifact(self.run_id, str(self.out / name))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self) -> None:
        self._safely("MLflow", lambda: self.client.set_terminated(self.run_id, "FAILED"))

    def close(self) -> None:
        self._safely("TensorBoard", lambda: self.writer.close())


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
