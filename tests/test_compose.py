"""docker-compose.yml, validated offline by Debian's docker-compose, against the rest.

The server flags are the policy in resnet_triton.server.policy_flags, the
same the local server runs with.
"""

import os
import posixpath
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from resnet_triton.repository import DEFAULT_ENV_PATH
from resnet_triton.server import policy_flags
from resnet_triton.spec import Names

ROOT = Path(__file__).parent.parent
KEY = "test-admin-key"


def compose_config(**env) -> subprocess.CompletedProcess:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose (Debian package) is missing: run `make setup`")
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_ADMIN_KEY"}
    return subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**environment, **env},
    )


@pytest.fixture(scope="module")
def services():
    result = compose_config(TRITON_ADMIN_KEY=KEY)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def test_admin_key_is_required():
    result = compose_config()
    assert result.returncode != 0
    assert "set TRITON_ADMIN_KEY" in result.stderr


def test_server_runs_the_serving_policy(services):
    command = services["tritonserver"]["command"]
    assert command[0] == "tritonserver"
    assert "--model-repository=/workspace/model_repository" in command
    assert set(policy_flags(KEY)) <= set(command)


def test_server_waits_for_the_engine_and_reserves_the_gpu(services):
    server, engine = services["tritonserver"], services["engine"]
    assert server["depends_on"]["engine"]["condition"] == "service_completed_successfully"
    for service in (server, engine):
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert {p["target"] for p in server["ports"]} == {8000, 8001, 8002}
    assert server["shm_size"] in ("1g", "1gb", 1073741824)
    assert "--target=gpu" in engine["command"]


def test_repository_is_read_only_and_the_user_unprivileged(services):
    (volume,) = services["tritonserver"]["volumes"]  # docker-compose 1.29: "host:target:mode"
    assert volume.endswith("/model_repository:/workspace/model_repository:ro")
    dockerfile = (ROOT / "Dockerfile").read_text()
    server_stage = dockerfile.split(" AS triton")[1].split("FROM ")[0]
    assert "\nUSER 1000\n" in server_stage


def test_healthcheck_classifies_through_the_ensemble(services):
    probe = services["tritonserver"]["healthcheck"]["test"]
    assert "resnet_triton.probe" in probe
    assert probe[probe.index("--model") + 1] == Names().ensemble


def test_both_images_follow_the_pinned_release(services):
    release = (ROOT / ".env").read_text().split("TRITON_RELEASE=")[1].split()[0]
    for name in ("tritonserver", "engine"):
        assert services[name]["image"].endswith(f":{release}")
        assert services[name]["build"]["args"]["TRITON_RELEASE"] == release


def test_execution_env_resolves_to_the_image_venv(services):
    model_dir = posixpath.join("/workspace/model_repository", Names().preprocess)
    venv = posixpath.normpath(DEFAULT_ENV_PATH.replace("$$TRITON_MODEL_DIRECTORY", model_dir))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert (
        dockerfile.count(f"python3 -m venv {venv}")
        + dockerfile.count(f"python3 -m venv --system-site-packages {venv}")
        == 2
    )
