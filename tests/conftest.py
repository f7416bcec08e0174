"""Shared fixtures: real images from installed packages, a small trained model,
and the real Triton server on free ports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import sklearn
from onnx import numpy_helper

from resnet_triton import build
from resnet_triton.data import package_photos, write_digits
from resnet_triton.server import Ports, TritonServer
from resnet_triton.spec import Names
from resnet_triton.training import TrainConfig
from resnet_triton.training import run as train

NAMES = Names()
ADMIN_KEY = "test-admin-key"
# Real photographs of several sizes, colour modes and formats.
PHOTOS = package_photos()
SKLEARN_IMAGES = Path(sklearn.__file__).parent / "datasets" / "images"

# The integration model: the digits at a small input size, so that training
# takes seconds; serving code reads every size from the spec.
SMALL = {"resize_size": 72, "crop_size": 64}


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


@pytest.fixture(scope="session")
def checkpoint(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    config = TrainConfig(
        data=str(digits),
        out=str(out),
        arch="resnet18",
        weights="none",
        epochs=3,
        lr=3e-3,
        hflip=False,
        workers=0,
        **SMALL,
    )
    train(config)
    return out / "checkpoint.pt"


@pytest.fixture(scope="session")
def repository(checkpoint, digits, tmp_path_factory) -> Path:
    """A published model repository (export, accuracy gate, render)."""
    root = tmp_path_factory.mktemp("published")
    options = build.BuildOptions(
        checkpoint, root / "model_repository", root / "build", target="cpu", images=digits / "val"
    )
    build.run(options)
    return root / "model_repository"


@pytest.fixture(scope="session")
def triton(repository, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    # A short exit timeout: Triton would wait 30 s for the tests' idle connections.
    server = TritonServer(
        repository, Ports.free(), log_path=log, exit_timeout_s=3, admin_key=ADMIN_KEY
    ).start()
    try:
        server.wait_ready([NAMES.ensemble], timeout=180)
        yield server
    finally:
        server.stop()


def snapshot(repo):
    return {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} if repo.exists() else {}


def damage(source, target, scale=0.3):
    """Perturb the largest convolution's weights: a silently broken conversion."""
    model = onnx.load(source)
    weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims) if len(t.dims) == 4 else 0)
    array = numpy_helper.to_array(weights)
    noise = np.random.default_rng(0).normal(scale=scale * array.std(), size=array.shape)
    weights.CopyFrom(numpy_helper.from_array((array + noise).astype(array.dtype), weights.name))
    onnx.save_model(model, target)
