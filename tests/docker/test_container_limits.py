"""What the serving container takes from its limits (serving/resources.py), in real
containers of the CPU image on the demo's repository: a /dev/shm too small for the
largest batches stops `serve` at start with the size it needs, and ONNX Runtime sizes
its threads by the container's CPU limit, not by the host's cores."""

import subprocess
import time
import uuid

import pytest
from conftest import ADMIN_KEY, run

from resnet_triton.serving.resources import MIB, recommended_shm, shm_needs

pytestmark = pytest.mark.docker


def docker_run(image: str, repository, *flags: str, name: str) -> list[str]:
    """`docker run` of the CPU image as compose runs it, with `flags` before the image."""
    return [
        "docker", "run", f"--name={name}", "--read-only", "--tmpfs=/tmp", "--cap-drop=ALL",
        "--security-opt=no-new-privileges:true", f"--env=TRITON_ADMIN_KEY={ADMIN_KEY}",
        f"--volume={repository}:/workspace/model_repository:ro", *flags, image,
    ]  # fmt: skip


def test_serve_refuses_a_dev_shm_too_small_for_the_largest_batches(cpu_image, demo_run):
    name = f"resnet-triton-test-{uuid.uuid4().hex[:8]}"
    try:
        result = subprocess.run(
            docker_run(cpu_image, demo_run.repository, "--shm-size=64m", name=name),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        run(["docker", "rm", "--force", name])
    need = sum(shm_needs(demo_run.repository).values()) / MIB
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"error: /dev/shm has 64 MiB free; the Python-backend models' largest batches need "
        f"{need:.0f} MiB" in result.stderr
    ), result.stderr
    assert f"Give the container {recommended_shm(demo_run.repository) // MIB} MiB" in result.stderr


def test_onnx_runtime_threads_follow_the_container_cpu_limit(cpu_image, demo_run):
    name = f"resnet-triton-test-{uuid.uuid4().hex[:8]}"
    line = "ONNX Runtime intra-op threads: 1 (cgroup CPU limit: 1 CPUs)"
    started = subprocess.run(
        docker_run(cpu_image, demo_run.repository, "--detach", "--cpus=1", "--shm-size=768m",
                   name=name),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        deadline, logs = time.monotonic() + 180, ""
        while time.monotonic() < deadline and line not in logs and "ready:" not in logs:
            time.sleep(2)
            found = run(["docker", "logs", name])
            logs = found.stdout + found.stderr
        assert line in logs, logs[-3000:]
    finally:
        run(["docker", "rm", "--force", name])
