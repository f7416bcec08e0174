"""The steps that build, smoke-test and publish one target (the package docstring has the list)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from resnet_triton.build import command as build
from resnet_triton.build import engine
from resnet_triton.build.images import ImageSet
from resnet_triton.build.manifest import Manifest, file_sha256
from resnet_triton.client import Classifier, Result
from resnet_triton.data import image_folder
from resnet_triton.pipeline.config import PipelineConfig, PipelineError
from resnet_triton.pipeline.store import Stage, keep_version, report, require
from resnet_triton.serving.container import ContainerTritonServer
from resnet_triton.serving.plans import published_plans
from resnet_triton.serving.repository import env_path_for, publish, render
from resnet_triton.serving.server import Ports, TritonServer
from resnet_triton.spec import Preprocessing, check_choice

SERVERS = ("local", "docker")


def build_step(config: PipelineConfig, name: str, force: bool = False) -> Stage:
    entry = config.pipeline_target(name)
    stage = Stage(config.work_dir / name)
    stage.status_path.unlink(missing_ok=True)  # a failed build leaves nothing to publish
    checkpoint = require(config, stage, "checkpoint")
    digest = file_sha256(checkpoint) if config.checkpoint_sha256 else None
    if digest != config.checkpoint_sha256:
        raise PipelineError(
            f"{checkpoint} has SHA-256 {digest}, not the pinned "
            f"checkpoint_sha256 {config.checkpoint_sha256}"
        )
    if entry.target == "gpu":
        gpu, _ = engine.gpu_status()  # no GPU at all: build.run names what is missing
        if gpu is not None and gpu.compute_capability != entry.compute_capability:
            raise PipelineError(
                f"target {name} expects compute capability {entry.compute_capability}, but "
                f"this runner has {gpu.name} ({gpu.compute_capability}): check its labels"
            )
    # Staging starts as the store's repository, so an unchanged build is skipped and
    # the other GPUs' plans stay in the rendered config.
    shutil.rmtree(stage.repository, ignore_errors=True)
    published = config.store / entry.repository
    if published.is_dir():
        shutil.copytree(published, stage.repository)
    options = build.BuildOptions(
        checkpoint=checkpoint,
        repository=stage.repository,
        work_dir=stage.root / "build",
        precision=entry.precision,
        target=entry.target,
        images=require(config, stage, "images"),
        calibration=require(config, stage, "calibration"),
        onnx=require(config, stage, "onnx"),
        env_path=config.env_path,  # as the store's configs have it, to compare them
        serving=entry.serving,
        force=force,
    )
    result = build.run(options)
    # An unchanged model whose serving settings changed is re-rendered, smoke-tested and
    # published like a new one: only its configs differ from the store's.
    configs_changed = result.skipped and configs(stage.repository) != configs(published)
    stage.status = {
        "target": name,
        "changed": not result.skipped or configs_changed,
        "content_hash": result.content_hash,
        "file": str(result.published.relative_to(stage.repository)),  # its layout's folder
        "spec": result.spec.to_dict(),
        "smoke": None,
    }
    stage.save()
    verdict = "built and gated" if not result.skipped else "unchanged"
    if configs_changed:
        verdict = "unchanged model, new serving configs"
    report(f"{name}: {verdict} ({entry.precision}, content hash {result.content_hash[:12]})")
    return stage


def configs(repository: Path) -> dict[str, str]:
    """Every config.pbtxt of a repository by model, empty for a missing repository."""
    return {p.parent.name: p.read_text() for p in sorted(repository.glob("*/config.pbtxt"))}


@dataclass(frozen=True)
class HoldoutCheck:
    """Held-out images classified through a served model (smoke tests, rollouts)."""

    images: int
    failed: list[Result]
    top1: float
    versions: set[str]  # the model versions that answered


def classify_holdout(
    url: str, model: str, holdout: Path, count: int, preprocessing: Preprocessing | None = None
) -> HoldoutCheck:
    """Classify `count` images spread over the class folders of `holdout` at `url` (gRPC)."""
    folder = image_folder(holdout, preprocessing)
    images = ImageSet.of(folder).spread(count)
    with Classifier(url, "grpc", model, concurrency=4) as client:
        results = client.classify(list(images.paths), top_k=1)
    truth = [folder.classes[label] for label in images.labels]
    correct = sum(r.ok and r.top1.label == t for r, t in zip(results, truth, strict=True))
    return HoldoutCheck(
        len(results), [r for r in results if not r.ok], round(correct / len(results), 4),
        {r.model_version for r in results if r.ok},
    )  # fmt: skip


def smoke_step(config: PipelineConfig, name: str, server: str = "local") -> Stage:
    check_choice("server", server, SERVERS)
    entry = config.pipeline_target(name)
    stage = Stage(config.work_dir / name).load()
    if not stage.status["changed"]:
        print(f"{name}: unchanged since the published build; no smoke test needed")
        return stage
    spec = stage.spec
    env_path = env_path_for(stage.repository) if server == "local" else config.env_path
    plans = published_plans(stage.model_file.parent) if entry.target == "gpu" else None
    render(spec, stage.repository, env_path, entry.target, plans, entry.serving)

    holdout = require(config, stage, "holdout")
    log = stage.root / "triton.log"
    if server == "local":
        triton = TritonServer(stage.repository, Ports.free(), log_path=log, exit_timeout_s=5)
    else:
        triton = ContainerTritonServer(
            stage.repository, Ports.free(), log_path=log, target=entry.target
        )
    with triton:
        triton.wait_ready([spec.names.ensemble], timeout=300)
        check = classify_holdout(
            f"localhost:{triton.ports.grpc}", spec.names.ensemble, holdout,
            config.holdout_images, spec.preprocessing,
        )  # fmt: skip
    failed, accuracy = check.failed, check.top1
    smoke = {
        "passed": not failed and accuracy >= config.min_accuracy,
        "content_hash": stage.status["content_hash"],
        "images": check.images,
        "failed_requests": len(failed),
        "top1_accuracy": accuracy,
        "min_accuracy": config.min_accuracy,
        "server": server,
    }
    stage.status["smoke"] = smoke
    stage.save()
    line = (
        f"{name}: smoke test on {check.images} held-out images through {spec.names.ensemble}: "
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
    entry = config.pipeline_target(name)
    stage = Stage(config.work_dir / name).load()
    if not stage.status["changed"]:
        print(f"{name}: the store already holds this build; nothing to publish")
        return None
    smoke = stage.status.get("smoke") or {}
    if not smoke.get("passed") or smoke.get("content_hash") != stage.status["content_hash"]:
        raise PipelineError(f"{name}: this build has not passed `pipeline smoke`; not publishing")
    staged = stage.model_file
    manifest = Manifest.read(staged)
    if (
        manifest is None
        or manifest.content_hash != stage.status["content_hash"]
        or not manifest.describes(staged)
    ):
        raise PipelineError(f"{staged} does not match its manifest or the build; not publishing")
    repo = config.store / entry.repository
    destination = publish(
        staged, stage.spec, repo, staged.name, manifest, config.env_path, entry.target,
        entry.serving,
    )  # fmt: skip
    version = keep_version(config.store, entry.repository, {
        "content_hash": stage.status["content_hash"], "target": name,
        "precision": entry.precision, "model_file": stage.status["file"],
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })  # fmt: skip
    stage.status["published"] = str(destination)
    stage.status["version"] = version
    stage.save()
    report(f"{name}: published {destination} ({entry.precision}), store version {version}")
    return destination


def matrix(config: PipelineConfig) -> dict:
    """{"include": [...]}, one entry per target, for `strategy.matrix` in the workflow."""
    return {
        "include": [
            {"target": t.name, "kind": t.target, "runs-on": list(t.runs_on)}
            for t in config.targets.values()
        ]
    }
