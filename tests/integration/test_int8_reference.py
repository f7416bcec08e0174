"""An INT8 model checked on the server's own CPU at load, on the real Triton server: the
honest model loads and says how it measured; one whose scores break its gate against the
reference outputs published with it is refused, with the numbers, in both layouts."""

import dataclasses
import re
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from conftest import NAMES, rerendered, served

from resnet_triton.build.export import spec_from_onnx
from resnet_triton.build.manifest import cpu_features
from resnet_triton.build.reference_outputs import ReferenceOutputs
from resnet_triton.client import Classifier
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.repository import ONNX_FILE, version_dir
from resnet_triton.serving.server import Ports, ServerError, TritonServer

pytestmark = pytest.mark.integration


def test_an_int8_model_that_keeps_its_gate_on_this_cpu_loads(int8_repository, digits, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(int8_repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    path = next((digits / "val" / "7").iterdir())
    model = version_dir(repo, NAMES.classifier) / ONNX_FILE
    spec = spec_from_onnx(model)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    local = session.run(None, {spec.names.pixels: pixels_from_files([path], spec.preprocessing)})
    with served(repo, tmp_path) as server:
        classifier = Classifier(f"localhost:{server.ports.grpc}", "grpc")
        with classifier:
            (row,) = classifier.classify_bytes([path.read_bytes()], top_k=1)
    assert row[0].index == local[0].argmax()  # served, as the INT8 model answers here
    log = (tmp_path / "triton.log").read_text()
    assert re.search(
        rf"{NAMES.classifier}: on this CPU as at build, 32 held-out images: max abs error "
        r"0\.0[0-4]\d*", log
    ), log  # fmt: skip


@pytest.mark.parametrize("layout", ["ensemble", "fused"])
def test_an_int8_model_that_breaks_its_gate_on_this_cpu_is_refused(
    int8_repository, tmp_path, layout
):
    """As a CPU whose kernels move every score by 0.01 would: the reference outputs the
    model is checked against moved instead (the model itself stays the honest one)."""
    repo = rerendered(int8_repository, tmp_path, ServingConfig(layout=layout))
    home = NAMES.ensemble if layout == "fused" else NAMES.classifier
    model = version_dir(repo, home) / ONNX_FILE  # the reference went with the model
    reference = ReferenceOutputs.read(model)
    dataclasses.replace(reference, scores=reference.scores + np.float32(0.01)).save(model)
    server = TritonServer(repo, Ports.free(), log_path=tmp_path / "triton.log", exit_timeout_s=3)
    with server, pytest.raises(ServerError, match="while loading"):
        server.wait_ready([NAMES.ensemble], timeout=180)
    log = (tmp_path / "triton.log").read_text()
    assert f"failed to load '{home}'" in log
    refusal = re.search(rf"{model} breaks its INT8 gate on this CPU \(.*", log).group()
    assert f"; {' '.join(cpu_features())}): on the 32 held-out images saved at build" in refusal
    assert re.search(r"mean abs error 0\.0\d+ \(<= 0\.005\)", refusal), refusal
    assert re.search(
        r"top-1 agreement 1\.0000 on the \d+ clear answers \(>= 0\.98\)", refusal
    )  # the answers stay
    assert f"the gate passed on {reference.build_cpu} (" in refusal
