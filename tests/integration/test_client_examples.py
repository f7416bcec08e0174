"""clients/: one small example per way of calling the server, each run as a user would
(python clients/<example>.py) against the real server, answering what the library does."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from conftest import ADMIN_KEY, NAMES
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import triton_to_np_dtype

from resnet_triton.client import Classifier

pytestmark = pytest.mark.integration

CLIENTS = Path(__file__).parents[2] / "clients"


def example(name: str, *args: str) -> list[str]:
    result = subprocess.run([sys.executable, str(CLIENTS / name), *args],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def images(digits) -> list[Path]:
    return sorted((digits / "val").glob("*/*.png"))[::60]  # 6 images over the classes


@pytest.fixture(scope="module")
def expected(triton, images) -> list[str]:
    with Classifier(f"localhost:{triton.ports.grpc}", "grpc") as classifier:
        results = classifier.classify(images)
    return [f"{r.source}: {r.top1.label} ({r.top1.score:.4f})" for r in results]


@pytest.mark.parametrize(
    ("name", "protocol", "extra"),
    [
        ("grpc_sync.py", "grpc", []),
        ("http_asyncio.py", "http", []),
        ("shared_memory.py", "grpc", ["--admin-key", ADMIN_KEY]),
        ("tritonclient_stock.py", "grpc", []),
    ],
)
def test_each_example_answers_like_the_library(triton, images, expected, name, protocol, extra):
    port = triton.ports.grpc if protocol == "grpc" else triton.ports.http
    lines = example(name, "--url", f"localhost:{port}", *extra, *map(str, images))
    assert lines == expected


def test_many_files_classifies_a_folder(triton, digits, tmp_path):
    """Every file's label counted: a folder of 3s and 7s (40, more than one request), and
    a file the server refuses, named with its error."""
    folder = tmp_path / "shots"
    for digit in ("3", "7"):
        for path in sorted((digits / "val" / digit).glob("*.png"))[:20]:
            (folder / digit).mkdir(parents=True, exist_ok=True)
            (folder / digit / path.name).write_bytes(path.read_bytes())
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    paths = sorted(folder.rglob("*.png"))
    with Classifier(f"localhost:{triton.ports.grpc}", "grpc") as classifier:
        results = classifier.classify(paths)  # the library's answer for each file
    (error,) = [r.error for r in results if not r.ok]
    assert "image 0: not a decodable image (38 bytes" in error
    counts = Counter(r.top1.label for r in results if r.ok)
    assert sum(counts.values()) == 40 and counts["3"] >= 18 and counts["7"] >= 18
    lines = example("many_files.py", "--url", f"localhost:{triton.ports.grpc}", str(folder))
    assert lines == [
        "41 images, requests of up to 32",
        "classified 41 images: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        f"{broken}: error: {error}",
    ]


def test_nvidias_image_client_steps_work_against_the_classifier(triton, repository, images):
    """The checks and preprocessing of NVIDIA's stock image_client.py (client repo,
    src/python/examples), written out: it reads the input's layout from the model
    config and refuses FORMAT_NONE; it resizes to the input's height and width and
    casts to its data type (scaling NONE), and asks for class_count results."""
    client = grpcclient.InferenceServerClient(f"localhost:{triton.ports.grpc}")
    model = NAMES.classifier
    metadata = client.get_model_metadata(model)
    config = client.get_model_config(model).config
    (input_meta,), (output_meta,) = metadata.inputs, metadata.outputs
    assert output_meta.datatype == "FP32"
    assert config.max_batch_size > 0 and len(input_meta.shape) == 4
    layout = config.input[0].format
    assert layout in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC), (
        f"unexpected input format {mc.ModelInput.Format.Name(layout)}"
    )
    if layout == mc.ModelInput.FORMAT_NHWC:
        height, width, channels = input_meta.shape[1:]
    else:
        channels, height, width = input_meta.shape[1:]
    assert channels == 3
    dtype = triton_to_np_dtype(input_meta.datatype)
    assert dtype == np.uint8

    resized = [
        np.array(Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR))
        for path in images
    ]
    batch = np.stack(resized).astype(dtype)  # (n, height, width, 3)
    if layout == mc.ModelInput.FORMAT_NCHW:
        batch = batch.transpose(0, 3, 1, 2)
    request = grpcclient.InferInput(input_meta.name, list(batch.shape), input_meta.datatype)
    request.set_data_from_numpy(batch)
    wanted = grpcclient.InferRequestedOutput(output_meta.name, class_count=1)
    answers = client.infer(model, [request], outputs=[wanted]).as_numpy(output_meta.name)
    client.close()

    session = ort.InferenceSession(
        str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    local = session.run(None, {input_meta.name: np.ascontiguousarray(batch)})[0]
    for (answer,), scores in zip(answers, local, strict=True):
        score, index = answer.decode().split(":")[:2]
        assert int(index) == scores.argmax()
        assert float(score) == pytest.approx(scores.max(), abs=1e-5)
