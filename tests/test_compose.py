"""docker-compose.yml (CPU) and docker-compose.gpu.yml, resolved offline by Compose v2's
`config` against the rest: the serving policy, the pins, what is published and mounted.
tests/docker/ runs the CPU service itself."""

import json
import os
import posixpath
import re
import subprocess
from pathlib import Path

import pytest

from resnet_triton.serving import capture, serve
from resnet_triton.serving.repository import DEFAULT_ENV_PATH
from resnet_triton.spec import Names

ROOT = Path(__file__).parent.parent
KEY = "test-admin-key"
GPU = ("docker-compose.yml", "docker-compose.gpu.yml")


def compose_config(files=("docker-compose.yml",), **env) -> subprocess.CompletedProcess:
    plugin = ROOT / ".docker" / "cli-plugins" / "docker-compose"
    if not plugin.exists():
        pytest.fail("Compose v2 is not in .docker/cli-plugins: run `make docker-tools`")
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_ADMIN_KEY"}
    return subprocess.run(
        [str(plugin), *(f"--file={name}" for name in files), "config", "--format=json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**environment, **env},
    )


def services(files=("docker-compose.yml",), **env) -> dict:
    result = compose_config(files, TRITON_ADMIN_KEY=KEY, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def release() -> str:
    return re.search(r"^TRITON_RELEASE=(\S+)$", (ROOT / ".env").read_text(), re.M)[1]


@pytest.mark.parametrize("files", [("docker-compose.yml",), GPU])
def test_admin_key_is_required(files):
    result = compose_config(files)
    assert result.returncode != 0
    assert "required variable TRITON_ADMIN_KEY is missing a value: set TRITON_ADMIN_KEY" in (
        result.stderr
    )


def test_cpu_service_is_the_cpu_image_behind_nginx():
    server = services()["tritonserver"]
    assert server["build"]["dockerfile"] == "docker/cpu.Dockerfile"
    assert server["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert server["environment"]["TRITON_ADMIN_KEY"] == KEY  # the image's serve reads it
    assert "deploy" not in server and "depends_on" not in server  # no GPU, no engine
    dockerfile = (ROOT / "docker" / "cpu.Dockerfile").read_text()
    assert "\nUSER 1000\n" in dockerfile and 'ENTRYPOINT ["serve-cpu"]' in dockerfile
    entrypoint = (ROOT / "docker" / "serve-cpu.sh").read_text()
    assert "--address 127.0.0.1 --http-port 18000 --grpc-port 18001 --metrics-port 18002" in (
        entrypoint
    )
    nginx = (ROOT / "docker" / "nginx.conf").read_text()
    assert "proxy_request_buffering on;" in nginx and "client_max_body_size 64m;" in nginx
    assert re.findall(r"(?:server |grpc://|http://)(127\.0\.0\.1:\d+)", nginx) == [
        "127.0.0.1:18000", "127.0.0.1:18001", "127.0.0.1:18002",
    ]  # fmt: skip


@pytest.mark.parametrize("files", [("docker-compose.yml",), GPU])
def test_ports_bind_loopback_unless_asked(files):
    ports = services(files)["tritonserver"]["ports"]
    assert {(p["host_ip"], p["target"], p["published"]) for p in ports} == {
        ("127.0.0.1", 8000, "8000"), ("127.0.0.1", 8001, "8001"), ("127.0.0.1", 8002, "8002"),
    }  # fmt: skip
    exposed = services(files, TRITON_BIND_ADDRESS="0.0.0.0", GRPC_PORT="9001")
    assert {(p["host_ip"], p["published"]) for p in exposed["tritonserver"]["ports"]} == {
        ("0.0.0.0", "8000"), ("0.0.0.0", "9001"), ("0.0.0.0", "8002"),
    }  # fmt: skip


@pytest.mark.parametrize("files", [("docker-compose.yml",), GPU])
def test_repository_is_mounted_read_only(files, tmp_path):
    server = services(files, MODEL_REPOSITORY=str(tmp_path))["tritonserver"]
    volume = next(v for v in server["volumes"] if v["target"] == "/workspace/model_repository")
    assert volume["source"] == str(tmp_path) and volume["read_only"] is True
    # serving/resources.py's size for the committed repository (tests/serving/test_resources.py)
    assert server["shm_size"] == str(768 * 1024 * 1024)
    # and more for one rendered with capture (tests/docker/test_learning_loop.py)
    bigger = services(files, RESNET_TRITON_SHM_SIZE="1536m")["tritonserver"]
    assert bigger["shm_size"] == str(1536 * 1024 * 1024)


def test_capture_is_off_unless_asked_and_kept_in_its_own_volume():
    server = services()["tritonserver"]
    assert server["environment"]["RESNET_TRITON_CAPTURE_DIR"] == ""  # off
    (captures,) = [v for v in server["volumes"] if v["target"] == "/captures"]
    assert (captures["type"], captures["source"]) == ("volume", "captures")
    assert "read_only" not in captures  # the one place the read-only container writes
    on = services(RESNET_TRITON_CAPTURE="1", RESNET_TRITON_CAPTURE_SHARE="0.1")["tritonserver"]
    settings = capture.from_environment(on["environment"], "w", writers=2)
    assert settings.directory == Path("/captures/w") and settings.share == 0.1
    assert settings.cap_bytes == 512 * 2**20 and settings.retention_s == 7 * 24 * 3600
    dockerfile = (ROOT / "docker" / "cpu.Dockerfile").read_text()
    assert "RUN install -d -o 1000 -g 1000 -m 0750 /captures\n" in dockerfile  # a new
    # volume starts with the image's owner and mode: the server's user alone reads it


@pytest.mark.parametrize("files", [("docker-compose.yml",), GPU])
def test_healthcheck_classifies_through_the_ensemble(files):
    server = services(files)["tritonserver"]
    probe = server["healthcheck"]["test"]
    assert probe[:4] == ["CMD", "/workspace/.venv/bin/python", "-m", "resnet_triton.serving.probe"]
    assert probe[probe.index("--model") + 1] == Names().ensemble
    assert server["restart"] == "unless-stopped"


def test_gpu_server_is_supervised_by_serve_after_the_engine():
    gpu = services(GPU)
    server, engine = gpu["tritonserver"], gpu["engine"]
    # serve, not tritonserver itself: it exits when a stub dies or the probe fails, so the
    # restart policy acts (Docker never restarts a container that is merely unhealthy).
    command = server["command"]
    assert command[:2] == ["resnet-triton", "serve"]
    args = serve.get_args_parser().parse_args(command[2:])
    assert args.tritonserver == Path("/opt/tritonserver/bin/tritonserver")
    assert args.repository == Path("/workspace/model_repository")
    assert args.address == "0.0.0.0"  # in the container; published on loopback (above)
    assert server["environment"]["TRITON_ADMIN_KEY"] == KEY  # serve's --admin-key default
    assert server["restart"] == "unless-stopped"
    assert server["depends_on"]["engine"]["condition"] == "service_completed_successfully"
    for service in (server, engine):
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert "--target=gpu" in engine["command"]
    assert (server["build"]["dockerfile"], server["build"]["target"]) == ("Dockerfile", "triton")
    dockerfile = (ROOT / "Dockerfile").read_text()
    server_stage = dockerfile.split(" AS triton")[1].split("FROM ")[0]
    assert "\nUSER 1000\n" in server_stage
    assert "ENV PATH=/workspace/.venv/bin:$PATH" in server_stage


def test_engine_writes_as_the_exported_host_user():
    # bash does not export UID/GID: compose would always have seen its 1000 default.
    assert services(GPU, HOST_UID="1234", HOST_GID="5678")["engine"]["user"] == "1234:5678"
    assert services(GPU, UID="1234", GID="5678")["engine"]["user"] == "1000:1000"


def test_one_place_pins_the_ngc_release():
    gpu = services(GPU)
    for name in ("tritonserver", "engine"):
        assert gpu[name]["image"] == f"resnet-triton/{name}:{release()}"
        assert gpu[name]["build"]["args"]["TRITON_RELEASE"] == release()
    # Anything else that names an NGC image names the same release.
    for path in [ROOT / "README.md", ROOT / "build" / "README.md"]:
        for found in re.findall(r"nvcr\.io/nvidia/[\w-]+:(\d\d\.\d\d)", path.read_text()):
            assert found == release(), path


def test_pinned_release_has_the_cve_fixes():
    # NVIDIA's bulletins: CVE-2025-23310/23311/23319/23320/23334 fixed in 25.07,
    # CVE-2026-24207 in 26.03, CVE-2026-47627 in 26.06, CVE-2026-16497 in 26.07.
    year, month = map(int, release().split("."))
    assert (year, month) >= (26, 7)


def test_execution_env_resolves_to_the_image_venv():
    model_dir = posixpath.join("/workspace/model_repository", Names().preprocess)
    venv = posixpath.normpath(DEFAULT_ENV_PATH.replace("$$TRITON_MODEL_DIRECTORY", model_dir))
    assert venv == "/workspace/.venv"
    assert "python3 -m venv /workspace/.venv" in (ROOT / "docker" / "cpu.Dockerfile").read_text()
    # Both NGC stages make it with docker/ngc-venv.sh (tests/docker/test_ngc_env.py runs it).
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("RUN sh /tmp/ngc-venv.sh /workspace/.venv") == 2
    assert "-m venv" not in dockerfile and "virtualenv" not in dockerfile
