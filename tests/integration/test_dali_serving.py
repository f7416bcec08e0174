"""The DALI ensemble served by NVIDIA's tritonserver (the only one with the DALI backend),
against the Python-path ensemble of the same model.

Runs where NVIDIA's Triton image is: set NGC_TRITONSERVER to its binary
(/opt/tritonserver/bin/tritonserver) in an environment whose Python matches the image's
Python backend stub. Marked gpu: the GPU hosts are where that image runs. No CI job
runs it: a manual check, whose command is in README.md (Development); not yet run.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import NAMES

from resnet_triton.build import command as build
from resnet_triton.build import engine
from resnet_triton.client import Classifier
from resnet_triton.data import image_folder
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.probe import probe
from resnet_triton.serving.server import Ports, TritonServer

NGC_TRITONSERVER = os.environ.get("NGC_TRITONSERVER")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.gpu,
    pytest.mark.skipif(
        not NGC_TRITONSERVER,
        reason="the DALI backend is in NVIDIA's tritonserver only: set NGC_TRITONSERVER",
    ),
]


def test_the_dali_ensemble_answers_as_the_python_one(checkpoint, digits, triton, tmp_path):
    target = "gpu" if engine.gpu_status()[0] else "cpu"  # nvJPEG where TensorRT is
    options = build.BuildOptions(
        checkpoint, tmp_path / "repo", tmp_path / "build", target=target,
        images=digits / "val", serving=ServingConfig(preprocess_backend="dali"),
    )  # fmt: skip
    build.run(options)
    samples = image_folder(digits / "val").samples
    paths = [samples[i][0] for i in np.linspace(0, len(samples) - 1, 40).astype(int)]
    images = [Path(p).read_bytes() for p in paths]
    images.insert(7, b"not an image")
    server = TritonServer(
        tmp_path / "repo", Ports.free(), log_path=tmp_path / "triton.log", exit_timeout_s=3,
        binary=Path(NGC_TRITONSERVER),
    ).start()  # fmt: skip
    try:
        server.wait_ready([NAMES.ensemble], timeout=300)
        with Classifier(f"{server.host}:{server.ports.grpc}") as dali_client:
            assert dali_client.info.input_datatype == "UINT8"
            answers = dali_client.classify(images)
        assert probe(f"{server.host}:{server.ports.http}", NAMES.ensemble)  # liveness: UINT8
    finally:
        server.stop()
    with Classifier(f"{triton.host}:{triton.ports.grpc}") as python_client:
        reference = python_client.classify([images[i] for i in range(len(images)) if i != 7])
    bad = answers.pop(7)
    assert not bad.ok and "decoders.image" in bad.error  # only it fails, named by DALI
    assert [a.top1.label for a in answers] == [r.top1.label for r in reference]
    scores = np.array([a.top1.score for a in answers])
    assert np.abs(scores - [r.top1.score for r in reference]).max() < 0.05
