"""The package runs on every interpreter that runs it: make setup's, the CPU image's and
the NGC images' of the release pinned in .env. requires-python and ruff's target name
the oldest; vermin checks mechanically that src/ needs nothing newer."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The Python of the Triton and TensorRT containers per NGC release (NVIDIA's framework
# support matrix): 25.xx and 26.xx run Ubuntu 24.04's 3.12. A new pin in .env fails
# here until its Python is added.
NGC_PYTHON = {"26.11": (3, 12)}


def version(text: str) -> tuple[int, int]:
    major, minor = re.fullmatch(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def oldest_supported() -> tuple[int, int]:
    return version(PYPROJECT["project"]["requires-python"].removeprefix(">="))


def interpreters() -> dict[str, tuple[int, int]]:
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "docker" / "cpu.Dockerfile").read_text()
    release = re.search(r"^TRITON_RELEASE=(\S+)$", (ROOT / ".env").read_text(), re.M)[1]
    assert release in NGC_PYTHON, f"add the Python of NGC release {release} to NGC_PYTHON"
    return {
        "make setup": version(re.search(r"^PYTHON \?= python(\S+)$", makefile, re.M)[1]),
        "CPU image": version(re.search(r"^ARG BASE_IMAGE=python:(\d+\.\d+)-", dockerfile, re.M)[1]),
        f"NGC {release} images": NGC_PYTHON[release],
    }


def vermin(target: tuple[int, int], *paths: Path) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "vermin"), "--no-tips", "--quiet", "--violations",
        "--eval-annotations", f"--target={target[0]}.{target[1]}-", *map(str, paths),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True)


def test_requires_python_is_the_oldest_interpreter_the_package_runs_on():
    assert oldest_supported() == min(interpreters().values()), interpreters()
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py{}{}".format(*oldest_supported())


def test_src_needs_nothing_newer_than_requires_python():
    result = vermin(oldest_supported(), ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr


def test_vermin_catches_a_newer_feature(tmp_path):
    module = tmp_path / "stamp.py"
    module.write_text("from datetime import UTC\n")  # Python 3.11+
    result = vermin((3, 10), module)
    assert result.returncode == 1
    assert "'datetime.UTC' member requires !2, 3.11" in result.stdout
