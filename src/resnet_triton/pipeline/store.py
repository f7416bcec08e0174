"""The model store and the pipeline's working folders: pull, push, and each target's Stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from resnet_triton.pipeline.config import (
    INPUTS,
    REMOTE,
    PipelineConfig,
    PipelineError,
    is_remote,
    scheme,
)
from resnet_triton.serving.repository import renumber
from resnet_triton.spec import ModelSpec


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
        return self.repository / self.status["file"]


# Every published repository is also kept as <store>/versions/<repository>/<n> (1, 2, ...)
# with <n>.json beside it saying what it is: the chart's model.version and `rollout` take
# a model from there; <store>/<repository> is the latest. A kept copy's models are version
# n (renumber), so that every answer names the store version it came from.
VERSIONS = "versions"


def versions_dir(store: Path, repository: str) -> Path:
    return store / VERSIONS / repository


def published_versions(store: Path, repository: str) -> list[int]:
    """The kept versions of `repository`, oldest first."""
    folder = versions_dir(store, repository)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def claim_version(store: Path, repository: str) -> tuple[int, Path]:
    """The next free version number and its private folder, `.<n>.partial`, made here.

    Making the folder is the claim: mkdir is atomic, so of two publishers that picked the
    same number one gets FileExistsError and tries the next; readers list only finished
    versions, so they never see a claim. A claim a crashed publisher left stays, and its
    number is skipped."""
    folder = versions_dir(store, repository)
    folder.mkdir(parents=True, exist_ok=True)
    number = max(published_versions(store, repository), default=0) + 1
    while True:
        partial = folder / f".{number}.partial"
        try:
            partial.mkdir()
        except FileExistsError:
            number += 1
            continue
        if not (folder / str(number)).exists():
            return number, partial
        # Finished (renamed from its claim) after the listing above: not free after all.
        partial.rmdir()
        number += 1


def keep_version(store: Path, repository: str, record: dict) -> int:
    """Copy the latest `repository` to the next version number n, `record` beside it.

    Its models are renumbered to n, so that Triton answers with the store version."""
    number, partial = claim_version(store, repository)
    shutil.copytree(store / repository, partial, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    renumber(partial, number)
    if "model_file" in record:  # <model>/<VERSION>/<file>, now <model>/<n>/<file>
        model, _, name = Path(record["model_file"]).parts
        record = {**record, "model_file": f"{model}/{number}/{name}"}
    folder = partial.with_name(str(number))
    folder.with_name(f"{number}.json").write_text(
        json.dumps({"version": number, **record}, indent=2, sort_keys=True)
    )
    partial.rename(folder)  # a reader never sees half a version
    return number


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
    stage = Stage(config.work_dir / config.pipeline_target(name).name)
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


def report(line: str) -> None:
    """Print, and add to the GitHub Actions job summary when running there."""
    print(line, flush=True)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(f"- {line}\n")
