"""What the serving container takes from its limits (serving/resources.py), in real
containers of the CPU image on the demo's repository: a /dev/shm too small for the
largest batches stops `serve` at start with the size it needs, and ONNX Runtime sizes
its threads by the container's CPU limit, not by the host's cores."""

import math
import subprocess
import time
import uuid

import pytest
from conftest import ADMIN_KEY, NAMES, run

from resnet_triton.build.export import spec_from_onnx
from resnet_triton.serving.config import ServingConfig

MIB = 1024 * 1024

pytestmark = pytest.mark.docker


def docker_run(image: str, repository, *flags: str, name: str) -> list[str]:
    """`docker run` of the CPU image as compose runs it, with `flags` before the image."""
    return [
        "docker", "run", f"--name={name}", "--read-only", "--tmpfs=/tmp", "--cap-drop=ALL",
        "--security-opt=no-new-privileges:true", f"--env=TRITON_ADMIN_KEY={ADMIN_KEY}",
        f"--volume={repository}:/workspace/model_repository:ro", *flags, image,
    ]  # fmt: skip


def largest_batches(repository) -> int:
    """Bytes of /dev/shm the demo's largest batches take, worked out from its model's spec
    and the serving defaults it was rendered with: each Python-backend stub's region starts
    at 1 MiB and holds a whole batch's inputs and outputs at once."""
    (model,) = repository.glob(f"{NAMES.classifier}/*/model.onnx")
    spec, serving = spec_from_onnx(model), ServingConfig()
    pixels = 3 * spec.preprocessing.crop_size**2  # uint8, from preprocess to classifier
    image = 4 + spec.preprocessing.max_bytes  # a TYPE_STRING element: length, then bytes
    classifier = MIB + spec.max_batch_size * (pixels + 4 * len(spec.labels))  # FP32 scores
    preprocess = MIB + spec.max_batch_size * (image + pixels)
    return serving.classifier_instances * classifier + serving.preprocess_instances * preprocess


def test_serve_refuses_a_dev_shm_too_small_for_the_largest_batches(cpu_image, demo_run):
    name = f"resnet-triton-test-{uuid.uuid4().hex[:8]}"
    try:
        result = subprocess.run(
            docker_run(cpu_image, demo_run.repository, "--shm-size=64m", name=name),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        run(["docker", "rm", "--force", name])
    need = largest_batches(demo_run.repository)
    # What to give: 25% headroom, rounded up to 256 MiB.
    give = math.ceil(need * 1.25 / (256 * MIB)) * 256
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"error: /dev/shm has 64 MiB free; the Python-backend models' largest batches need "
        f"{need / MIB:.0f} MiB" in result.stderr
    ), result.stderr
    assert f"Give the container {give} MiB" in result.stderr


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
