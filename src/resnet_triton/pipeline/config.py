"""The pipeline config (build/pipeline.yaml): the checkpoint reference, inputs, store, targets.

String values may name environment variables as ${NAME}: build/pipeline.yaml
reads everything from ${MODEL_STORE_URI}, and an unset variable stops the step
with the field and the variable named.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from resnet_triton.build.command import PRECISIONS
from resnet_triton.errors import UserError
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.repository import DEFAULT_ENV_PATH
from resnet_triton.spec import check_choice, fields_of, read_yaml

HOSTED_RUNNER = ("ubuntu-latest",)  # CPU targets need no GPU runner
# Inputs the config may give as URIs, and whether each is a folder.
INPUTS = {"checkpoint": False, "images": True, "calibration": True, "holdout": True, "onnx": False}
# Object stores: (file copy, folder copy) commands. Folder copies leave out the
# __pycache__ that the Python backend writes beside model.py when a store is served.
REMOTE = {
    "s3": (["aws", "s3", "cp"], ["aws", "s3", "sync", "--exclude", "*__pycache__*"]),
    "gs": (
        ["gcloud", "storage", "cp"],
        ["gcloud", "storage", "rsync", "-r", "--exclude", ".*__pycache__.*"],
    ),
}


class PipelineError(UserError):
    """A step cannot run as configured, or its checks failed; nothing was published."""


VARIABLE = re.compile(r"\$\{(\w+)\}")


def expand(value, where: str):
    """`value` with every ${NAME} replaced by the environment's NAME, which must be set."""
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        if not os.environ.get(match[1]):
            raise PipelineError(
                f"{where} uses ${{{match[1]}}}, which is not set: export {match[1]} (in the "
                f"engine workflow, the repository variable {match[1]}; build/README.md)"
            )
        return os.environ[match[1]]

    return VARIABLE.sub(lookup, value)


@dataclass(frozen=True)
class PipelineTarget:
    """One entry of the config's `targets`: what to build (`target`: cpu or gpu) and where."""

    name: str
    target: str  # "cpu" (ONNX Runtime) or "gpu" (TensorRT)
    precision: str
    runs_on: tuple[str, ...] = ()  # GitHub runner labels; the hosted runner for cpu
    compute_capability: str | None = None  # gpu: what the runners' GPU must have ("9.0")
    repository: str = ""  # folder in the store; default: the target kind
    serving: ServingConfig = ServingConfig()  # how its repository serves (serving/config.py)

    def __post_init__(self) -> None:
        where = f"targets.{self.name}"
        check_choice(f"{where}.target", self.target, ("cpu", "gpu"))
        check_choice(f"{where}.precision", self.precision, PRECISIONS[self.target])
        if self.target == "gpu" and "self-hosted" not in self.runs_on:
            raise PipelineError(
                f"{where}.runs_on must name a self-hosted GPU runner, e.g. "
                "[self-hosted, linux, gpu-h100]"
            )
        if (self.target == "gpu") != (self.compute_capability is not None):
            raise PipelineError(
                f"{where}.compute_capability (e.g. '9.0' for H100) is required for gpu "
                "targets and meaningless for cpu ones"
            )
        if self.compute_capability is not None:  # YAML reads 9.0 as a number
            object.__setattr__(self, "compute_capability", str(self.compute_capability))
        object.__setattr__(self, "runs_on", tuple(self.runs_on) or HOSTED_RUNNER)
        object.__setattr__(self, "repository", self.repository or self.target)
        if isinstance(self.serving, dict):
            serving = ServingConfig.from_dict(self.serving, f"{where}.serving")
            object.__setattr__(self, "serving", serving)


@dataclass(frozen=True)
class PipelineConfig:
    checkpoint: str  # path, s3:// or gs:// URI: the checkpoint reference
    images: str  # validation ImageFolder for the accuracy gates
    holdout: str  # ImageFolder the smoke test classifies through the served ensemble
    targets: dict[str, PipelineTarget]
    calibration: str | None = None  # INT8 calibration ImageFolder
    checkpoint_sha256: str | None = None  # pin the checkpoint's content
    onnx: str | None = None  # gate and ship this FP32 ONNX instead of exporting one
    min_accuracy: float = 0.9
    holdout_images: int = 500
    store: Path = Path("artifacts/model_store")
    store_uri: str | None = None  # s3://, gs:// or folder copy of the store, which servers read
    # EXECUTION_ENV_PATH in the store's configs: the default finds the Triton image's
    # /workspace/.venv from a repository mounted at /workspace/model_repository; a server
    # reading s3:// or gs:// itself needs the absolute path (build/README.md).
    env_path: str = DEFAULT_ENV_PATH
    work_dir: Path = Path("artifacts/pipeline")

    @classmethod
    def load(cls, path: Path) -> PipelineConfig:
        data = read_yaml(path, "pipeline config", PipelineError)
        kwargs = fields_of(cls, data, f"pipeline config {path}")
        kwargs = {k: expand(v, f"pipeline config {path}: {k}") for k, v in kwargs.items()}
        for key in ("checkpoint", "images", "holdout", "targets"):
            if not kwargs.get(key):
                raise PipelineError(f"pipeline config {path}: field {key!r} is required")
        if not isinstance(kwargs["targets"], dict):
            raise PipelineError(f"pipeline config {path}: targets must map names to targets")
        kwargs["targets"] = {
            name: PipelineTarget(
                **{**fields_of(PipelineTarget, entry, f"targets.{name}"), "name": name}
            )
            for name, entry in kwargs["targets"].items()
        }
        # A repository has one set of configs: targets that share it share serving settings.
        by_repository: dict[str, PipelineTarget] = {}
        for t in kwargs["targets"].values():
            first = by_repository.setdefault(t.repository, t)
            if first.serving != t.serving:
                raise PipelineError(
                    f"pipeline config {path}: targets {first.name} and {t.name} publish into the "
                    f"same store repository {t.repository!r} with different `serving:` settings"
                )
        # One model file per (repository, compute capability): model.onnx, model.sm90.plan.
        files = [(t.repository, t.compute_capability) for t in kwargs["targets"].values()]
        if len(files) != len(set(files)):
            raise PipelineError(
                f"pipeline config {path}: two targets would publish the same model file "
                "(same store repository and compute capability); give one a `repository:` "
                "of its own"
            )
        for key in INPUTS:
            value = kwargs.get(key)
            if isinstance(value, str) and is_remote(value) and scheme(value) not in REMOTE:
                raise PipelineError(
                    f"pipeline config {path}: {key} {value} is not a local path, s3:// or gs://"
                )
        store_uri = kwargs.get("store_uri")
        if store_uri is not None and is_remote(str(store_uri)) and scheme(store_uri) not in REMOTE:
            raise PipelineError(
                f"pipeline config {path}: store_uri {store_uri} is not s3://, gs:// or a folder"
            )
        for key in ("store", "work_dir"):
            if key in kwargs:
                kwargs[key] = Path(kwargs[key])
        accuracy, images = kwargs.get("min_accuracy", 0.9), kwargs.get("holdout_images", 500)
        if not isinstance(accuracy, int | float) or not 0 <= accuracy <= 1:
            raise PipelineError(f"pipeline config {path}: min_accuracy must be within [0, 1]")
        if not isinstance(images, int) or images < 1:
            raise PipelineError(
                f"pipeline config {path}: holdout_images must be a positive integer"
            )
        return cls(**kwargs)

    def pipeline_target(self, name: str) -> PipelineTarget:
        if name not in self.targets:
            raise PipelineError(f"unknown target {name!r}; choose one of {', '.join(self.targets)}")
        return self.targets[name]


def scheme(uri: str) -> str | None:
    """ "s3" for s3://bucket/key; None for a local path."""
    head, sep, _ = uri.partition("://")
    return head if sep else None


def is_remote(uri: str) -> bool:
    return scheme(uri) is not None
