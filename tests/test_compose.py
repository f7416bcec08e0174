"""docker-compose.yml and the Dockerfile agree with the rendered repository."""

import posixpath
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from resnet_triton.repository import DEFAULT_ENV_PATH
from resnet_triton.spec import Names

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def service():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["tritonserver"]


def test_compose_file_validates_offline():
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose (Debian package) is missing: run `make setup`")
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_healthcheck_waits_for_the_ensemble(service):
    probe = " ".join(service["healthcheck"]["test"])
    assert f"/v2/models/{Names().ensemble}/ready" in probe


def test_execution_env_resolves_to_the_image_venv(service):
    host, container, mode = service["volumes"][0].split(":")
    assert (host, mode) == ("./model_repository", "ro")
    assert f"--model-repository={container}" in service["command"]
    model_dir = posixpath.join(container, Names().preprocess)
    venv = posixpath.normpath(DEFAULT_ENV_PATH.replace("$$TRITON_MODEL_DIRECTORY", model_dir))
    assert f"python3 -m venv {venv}" in (ROOT / "Dockerfile").read_text()
