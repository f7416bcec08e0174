"""/dev/shm sizing and the cgroup CPU limit (serving/resources.py): the formula on the
default repository, the sizes compose and the chart give, and the limit read from
cgroup v1 and v2 files as containers see them."""

import os
from pathlib import Path

import pytest
import yaml

from resnet_triton.errors import UserError
from resnet_triton.serving.resources import (
    MIB,
    check_shm,
    cpu_limit,
    onnx_threads,
    recommended_shm,
    shm_needs,
)
from resnet_triton.spec import ModelSpec

ROOT = Path(__file__).parents[2]
REPOSITORY = ROOT / "model_repository"  # the default spec, rendered


def default_needs() -> dict[str, int]:
    """The bytes the default repository's largest batches take, worked out from its spec."""
    spec = ModelSpec(labels=tuple("0123456789"))
    pixels = 3 * 224 * 224  # uint8, between the two models
    image = 4 + spec.preprocessing.max_bytes  # a serialized TYPE_STRING element at its limit
    return {
        "classifier": MIB + 32 * (pixels + 4 * 10),  # pixels in, 10 FP32 scores out
        "preprocess": MIB + 32 * (image + pixels),
    }


def test_the_largest_batches_of_the_default_repository():
    assert shm_needs(REPOSITORY) == default_needs()
    assert recommended_shm(REPOSITORY) == 768 * MIB  # 523 MiB + 25%, rounded up to 256 MiB


def test_compose_and_the_chart_give_what_the_default_repository_needs():
    size = recommended_shm(REPOSITORY) // MIB
    for path in ("docker-compose.yml", "deploy/docker/replicas.yml"):
        services = yaml.safe_load((ROOT / path).read_text())["services"]
        sizes = {s["shm_size"] for s in services.values() if "shm_size" in s}
        # RESNET_TRITON_SHM_SIZE's default (a repository rendered with capture needs more)
        assert sizes == {f"${{RESNET_TRITON_SHM_SIZE:-{size}m}}"}, path
    values = yaml.safe_load((ROOT / "deploy/helm/resnet-triton/values.yaml").read_text())
    assert values["sharedMemory"] == f"{size}Mi"


def test_a_dev_shm_is_refused_below_what_the_largest_batches_need(tmp_path):
    need = sum(default_needs().values())  # 523.2 MiB
    check_shm(REPOSITORY, free=need)  # exactly enough
    check_shm(REPOSITORY, free=64 * 1024 * MIB)
    with pytest.raises(UserError) as refused:
        check_shm(REPOSITORY, Path("/shm"), free=need - 1)
    assert str(refused.value).startswith(
        "/shm has 523 MiB free; the Python-backend models' largest batches need 523 MiB "
        "(classifier 6 MiB, preprocess 518 MiB: "
    )
    assert "Give the container 768 MiB" in str(refused.value)
    empty = write(tmp_path, {"notes/config.pbtxt": 'name: "notes"\nbackend: "onnxruntime"\n'})
    check_shm(empty, free=0)  # no Python-backend model: no /dev/shm needed


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # cgroup v2 in a container (its own cgroup is the root it sees)
        ({"proc/cgroup": "0::/\n", "cg/cpu.max": "150000 100000\n"}, 1.5),
        ({"proc/cgroup": "0::/\n", "cg/cpu.max": "max 100000\n"}, None),
        # v2 with the host's paths: the tightest limit from the process's cgroup up
        ({"proc/cgroup": "0::/kubepods/pod1/c1\n", "cg/kubepods/pod1/c1/cpu.max": "max 100000\n",
          "cg/kubepods/pod1/cpu.max": "200000 100000\n", "cg/kubepods/cpu.max": "400000 100000\n"},
         2.0),
        # v1 (Docker on a hybrid host): the container's cpu folder is mounted at cpu/
        ({"proc/cgroup": "4:memory:/docker/abc\n1:cpu:/docker/abc\n0::/\n",
          "cg/cpu/cpu.cfs_quota_us": "100000\n", "cg/cpu/cpu.cfs_period_us": "100000\n"}, 1.0),
        ({"proc/cgroup": "1:cpu,cpuacct:/\n", "cg/cpu/cpu.cfs_quota_us": "-1\n",
          "cg/cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no /proc/self/cgroup at all
    ],
)  # fmt: skip
def test_the_cgroup_cpu_limit(tmp_path, files, expected):
    root = write(tmp_path, files)
    assert cpu_limit(root / "cg", root / "proc") == expected


@pytest.mark.parametrize(
    ("limit", "cpus", "threads"),
    [
        (None, 2, 0),  # no limit: ONNX Runtime's own choice
        (None, 64, 0),
        (1.0, 2, 1),
        (1.5, 2, 2),  # 1.5 CPUs of time keep 2 threads busy part of the time
        (1.5, 1, 1),  # never more than the CPUs the process may run on
        (64.0, 2, 2),
        (64.0, 16, 16),
        (3.2, 16, 4),
        (0.2, 8, 1),
    ],
)  # fmt: skip
def test_onnx_runtime_threads_under_a_limit(limit, cpus, threads):
    assert onnx_threads(limit, cpus) == threads


def test_onnx_runtime_threads_count_the_cpus_this_process_may_run_on():
    cpus = len(os.sched_getaffinity(0))  # fewer than the machine's under taskset or a cpuset
    assert onnx_threads(1024.0) == cpus
    assert onnx_threads(0.5) == 1
