"""The engine pipeline: build, gate, smoke-test and publish one target to the model store.

What CI's engine workflow (.github/workflows/engines.yml) runs, step by step,
and what `make pipeline` runs here. Every step reads the pipeline config
(build/pipeline.yaml) and works in <work>/<target>/:

  matrix   the targets as a GitHub Actions matrix (JSON), with their runner labels
  pull     copy the store from `store_uri` (s3://, gs:// or a folder) into `store`,
           if set, and with --target the inputs the config gives as URIs
  build    seed a staging repository from the store, then `resnet-triton build`
           into it: export, accuracy gates, manifest. Skipped (nothing to do in
           the later steps) when the store already holds a model built from the
           same inputs (content hash, manifest.py)
  smoke    serve the staging repository with the real Triton server (here, or in
           the target's container with --server docker), classify held-out
           images through the ensemble: every request must succeed and top-1
           accuracy must reach min_accuracy
  publish  copy the model file and its manifest into the store's repository for
           the target and render its configs; refused unless the smoke test
           passed for this very build
  push     copy `store` back to `store_uri`, if set
  all      pull, build, smoke, publish, push

String values may name environment variables as ${NAME}: build/pipeline.yaml
reads everything from ${MODEL_STORE_URI}, and an unset variable stops the step
with the field and the variable named.

The store is a folder of Triton model repositories, one per target kind
(<store>/cpu, <store>/gpu; build/README.md). GPU targets share <store>/gpu:
one plan per compute capability, picked by Triton through cc_model_filenames.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from resnet_triton import build, engine
from resnet_triton.client import Classifier
from resnet_triton.data import image_folder
from resnet_triton.errors import UserError
from resnet_triton.manifest import file_sha256, read_manifest
from resnet_triton.repository import (
    DEFAULT_ENV_PATH,
    env_path_for,
    publish,
    published_plans,
    render,
)
from resnet_triton.server import ContainerTritonServer, Ports, TritonServer
from resnet_triton.spec import ModelSpec, check_choice, fields_of

STEPS = ("matrix", "pull", "build", "smoke", "publish", "push", "all")
SERVERS = ("local", "docker")
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
class Target:
    name: str
    target: str  # "cpu" (ONNX Runtime) or "gpu" (TensorRT)
    precision: str
    runs_on: tuple[str, ...] = ()  # GitHub runner labels; the hosted runner for cpu
    compute_capability: str | None = None  # gpu: what the runners' GPU must have ("9.0")
    repository: str = ""  # folder in the store; default: the target kind

    def __post_init__(self) -> None:
        where = f"targets.{self.name}"
        check_choice(f"{where}.target", self.target, ("cpu", "gpu"))
        check_choice(f"{where}.precision", self.precision, build.PRECISIONS[self.target])
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


@dataclass(frozen=True)
class PipelineConfig:
    checkpoint: str  # path, s3:// or gs:// URI: the checkpoint reference
    images: str  # validation ImageFolder for the accuracy gates
    holdout: str  # ImageFolder the smoke test classifies through the served ensemble
    targets: dict[str, Target]
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
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise PipelineError(f"cannot read pipeline config {path}: {exc}") from None
        kwargs = fields_of(cls, data, f"pipeline config {path}")
        kwargs = {k: expand(v, f"pipeline config {path}: {k}") for k, v in kwargs.items()}
        for key in ("checkpoint", "images", "holdout", "targets"):
            if not kwargs.get(key):
                raise PipelineError(f"pipeline config {path}: field {key!r} is required")
        if not isinstance(kwargs["targets"], dict):
            raise PipelineError(f"pipeline config {path}: targets must map names to targets")
        kwargs["targets"] = {
            name: Target(**{**fields_of(Target, entry, f"targets.{name}"), "name": name})
            for name, entry in kwargs["targets"].items()
        }
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

    def target(self, name: str) -> Target:
        if name not in self.targets:
            raise PipelineError(f"unknown target {name!r}; choose one of {', '.join(self.targets)}")
        return self.targets[name]


@dataclass
class Stage:
    """One target's working folder and the status the steps hand each other."""

    root: Path
    status: dict = field(default_factory=dict)

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    def load(self) -> Stage:
        if not self.status_path.is_file():
            raise PipelineError(f"{self.status_path} is missing: run `pipeline build` first")
        self.status = json.loads(self.status_path.read_text())
        return self

    def save(self) -> None:
        self.status_path.write_text(json.dumps(self.status, indent=2))

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.status["spec"])

    @property
    def model_file(self) -> Path:
        return self.repository / self.spec.names.classifier / "1" / self.status["file"]


def scheme(uri: str) -> str | None:
    """ "s3" for s3://bucket/key; None for a local path."""
    head, sep, _ = uri.partition("://")
    return head if sep else None


def is_remote(uri: str) -> bool:
    return scheme(uri) is not None


def copy_command(uri: str, folder: bool) -> list[str]:
    """The command that copies to or from `uri` (an object, or a prefix when `folder`)."""
    if scheme(uri) not in REMOTE:
        raise PipelineError(f"unsupported URI {uri}; use a local path, s3:// or gs://")
    command = REMOTE[scheme(uri)][1 if folder else 0]
    if shutil.which(command[0]) is None:
        raise PipelineError(f"{uri} needs the `{command[0]}` command, which is not installed")
    return command


def local_input(config: PipelineConfig, stage: Stage, name: str) -> Path | None:
    """Where the steps read input `name`: its path, or the copy `pull` made of its URI."""
    uri = getattr(config, name)
    if uri is None or not is_remote(uri):
        return None if uri is None else Path(uri)
    return stage.inputs / name / uri.rstrip("/").rsplit("/", 1)[-1]


def pull_step(config: PipelineConfig, name: str | None = None) -> None:
    """The store from store_uri, and for target `name` the inputs given as URIs.

    Only pull and push touch the network: build and smoke read local copies,
    so they also run in containers without object-store tools.
    """
    sync_store(config, "pull")
    if name is None:
        return
    stage = Stage(config.work_dir / config.target(name).name)
    for key, folder in INPUTS.items():
        uri = getattr(config, key)
        if uri is not None and is_remote(uri):
            local = local_input(config, stage, key)
            local.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([*copy_command(uri, folder), uri, str(local)], check=True)
            report(f"{name}: {key} {uri} -> {local}")


def sync_store(config: PipelineConfig, direction: str) -> None:
    """pull: store_uri -> store; push: store -> store_uri. Nothing to do without store_uri."""
    if not config.store_uri:
        print(f"no store_uri configured: the model store is the folder {config.store}")
        return
    config.store.mkdir(parents=True, exist_ok=True)
    pair = [config.store_uri, str(config.store)]
    source, dest = pair if direction == "pull" else pair[::-1]
    if is_remote(config.store_uri):
        subprocess.run([*copy_command(config.store_uri, folder=True), source, dest], check=True)
    elif Path(source).is_dir():  # a folder (a mounted share): copied, as sync does
        shutil.copytree(
            source, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    else:
        print(f"{source} does not exist yet: nothing to {direction}")
        return
    report(f"{direction}: {source} -> {dest}")


def require(config: PipelineConfig, stage: Stage, name: str) -> Path | None:
    path = local_input(config, stage, name)
    if path is not None and not path.exists():
        hint = (
            f"run `pipeline pull --target {stage.root.name}` first"
            if is_remote(getattr(config, name))
            else f"fix the pipeline config's field {name!r}"
        )
        raise PipelineError(f"{name} {path} does not exist: {hint}")
    return path


def build_step(config: PipelineConfig, name: str, force: bool = False) -> Stage:
    target = config.target(name)
    stage = Stage(config.work_dir / name)
    stage.status_path.unlink(missing_ok=True)  # a failed build leaves nothing to publish
    checkpoint = require(config, stage, "checkpoint")
    digest = file_sha256(checkpoint) if config.checkpoint_sha256 else None
    if digest != config.checkpoint_sha256:
        raise PipelineError(
            f"{checkpoint} has SHA-256 {digest}, not the pinned "
            f"checkpoint_sha256 {config.checkpoint_sha256}"
        )
    if target.target == "gpu":
        gpu, _ = engine.gpu_status()  # no GPU at all: build.run names what is missing
        if gpu is not None and gpu.compute_capability != target.compute_capability:
            raise PipelineError(
                f"target {name} expects compute capability {target.compute_capability}, but "
                f"this runner has {gpu.name} ({gpu.compute_capability}): check its labels"
            )
    # Staging starts as the store's repository, so an unchanged build is skipped and
    # the other GPUs' plans stay in the rendered config.
    shutil.rmtree(stage.repository, ignore_errors=True)
    published = config.store / target.repository
    if published.is_dir():
        shutil.copytree(published, stage.repository)
    options = build.BuildOptions(
        checkpoint=checkpoint,
        repository=stage.repository,
        work_dir=stage.root / "build",
        precision=target.precision,
        target=target.target,
        images=require(config, stage, "images"),
        calibration=require(config, stage, "calibration"),
        onnx=require(config, stage, "onnx"),
        force=force,
    )
    result = build.run(options)
    stage.status = {
        "target": name,
        "changed": not result["skipped"],
        "content_hash": result["content_hash"],
        "file": Path(result["published"]).name,
        "spec": result["spec"].to_dict(),
        "smoke": None,
    }
    stage.save()
    verdict = "built and gated" if stage.status["changed"] else "unchanged"
    report(f"{name}: {verdict} ({target.precision}, content hash {result['content_hash'][:12]})")
    return stage


def smoke_step(config: PipelineConfig, name: str, server: str = "local") -> Stage:
    check_choice("server", server, SERVERS)
    target = config.target(name)
    stage = Stage(config.work_dir / name).load()
    if not stage.status["changed"]:
        print(f"{name}: unchanged since the published build; no smoke test needed")
        return stage
    spec = stage.spec
    env_path = env_path_for(stage.repository) if server == "local" else config.env_path
    plans = published_plans(stage.model_file.parent) if target.target == "gpu" else None
    render(spec, stage.repository, env_path, target.target, plans)

    holdout = require(config, stage, "holdout")
    paths, labels = build.sample(holdout, config.holdout_images)
    classes = image_folder(holdout).classes
    log = stage.root / "triton.log"
    if server == "local":
        triton = TritonServer(stage.repository, Ports.free(), log_path=log, exit_timeout_s=5)
    else:
        triton = ContainerTritonServer(
            stage.repository, Ports.free(), log_path=log, target=target.target
        )
    with triton:
        triton.wait_ready([spec.names.ensemble], timeout=300)
        url = f"localhost:{triton.ports.grpc}"
        with Classifier(url, "grpc", spec.names.ensemble, concurrency=4) as client:
            results = client.classify(paths, top_k=1)
    failed = [r for r in results if not r.ok]
    correct = sum(
        r.ok and r.top1.label == classes[label] for r, label in zip(results, labels, strict=True)
    )
    accuracy = round(correct / len(paths), 4)
    smoke = {
        "passed": not failed and accuracy >= config.min_accuracy,
        "content_hash": stage.status["content_hash"],
        "images": len(paths),
        "failed_requests": len(failed),
        "top1_accuracy": accuracy,
        "min_accuracy": config.min_accuracy,
        "server": server,
    }
    stage.status["smoke"] = smoke
    stage.save()
    line = (
        f"{name}: smoke test on {len(paths)} held-out images through {spec.names.ensemble}: "
        f"top-1 {accuracy:.4f} (min {config.min_accuracy}), "
        f"{len(failed)} failed requests"
    )
    report(line)
    if failed:
        raise PipelineError(f"{line}; first: {failed[0].source}: {failed[0].error}")
    if not smoke["passed"]:
        raise PipelineError(f"{line}: below min_accuracy; nothing published")
    return stage


def publish_step(config: PipelineConfig, name: str) -> Path | None:
    target = config.target(name)
    stage = Stage(config.work_dir / name).load()
    if not stage.status["changed"]:
        print(f"{name}: the store already holds this build; nothing to publish")
        return None
    smoke = stage.status.get("smoke") or {}
    if not smoke.get("passed") or smoke.get("content_hash") != stage.status["content_hash"]:
        raise PipelineError(f"{name}: this build has not passed `pipeline smoke`; not publishing")
    staged = stage.model_file
    manifest = read_manifest(staged)
    if (
        manifest is None
        or manifest["content_hash"] != stage.status["content_hash"]
        or manifest["output_sha256"] != file_sha256(staged)
    ):
        raise PipelineError(f"{staged} does not match its manifest or the build; not publishing")
    repo = config.store / target.repository
    destination = publish(
        staged, stage.spec, repo, staged.name, manifest, config.env_path, target.target
    )
    stage.status["published"] = str(destination)
    stage.save()
    report(f"{name}: published {destination} ({target.precision})")
    return destination


def matrix(config: PipelineConfig) -> dict:
    """{"include": [...]}, one entry per target, for `strategy.matrix` in the workflow."""
    return {
        "include": [
            {"target": t.name, "kind": t.target, "runs-on": list(t.runs_on)}
            for t in config.targets.values()
        ]
    }


def report(line: str) -> None:
    """Print, and add to the GitHub Actions job summary when running there."""
    print(line, flush=True)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(f"- {line}\n")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--config", type=Path, default=Path("build/pipeline.yaml"))
    parser.add_argument(
        "--target", help="a target in the config (needed by build, smoke, publish and all)"
    )
    parser.add_argument(
        "--server",
        default="local",
        help="smoke test server: local (this environment's tritonserver) or docker "
        "(docker-compose.yml's tritonserver container: the CPU image for a cpu target, "
        "the pinned NGC image for a gpu target; built when missing or stale)",
    )
    parser.add_argument("--force", action="store_true", help="build even when unchanged")
    return parser


def main(args: argparse.Namespace) -> int:
    config = PipelineConfig.load(args.config)
    if args.step == "matrix":
        print(json.dumps(matrix(config)))
        return 0
    if not args.target and args.step not in ("pull", "push"):
        raise PipelineError(
            f"`pipeline {args.step}` needs --target, one of: {', '.join(config.targets)}"
        )
    steps = {
        "pull": lambda: pull_step(config, args.target),
        "build": lambda: build_step(config, args.target, args.force),
        "smoke": lambda: smoke_step(config, args.target, args.server),
        "publish": lambda: publish_step(config, args.target),
        "push": lambda: sync_store(config, "push"),
    }
    for step in steps if args.step == "all" else [args.step]:
        steps[step]()
    return 0
