"""clients/: one small example per way of calling the server, each run as a user would
(python clients/<example>.py) against the real server, answering what the library does."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ADMIN_KEY

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


def test_many_files_classifies_a_folder(triton, digits, images):
    lines = example("many_files.py", "--url", f"localhost:{triton.ports.grpc}",
                    str(digits / "val" / "3"))  # fmt: skip
    count = len(list((digits / "val" / "3").glob("*.png")))
    assert lines[0] == f"{count} images, requests of up to 32"
    assert lines[1].startswith(f"classified {count} images: ")
    assert "3: " in lines[1]
