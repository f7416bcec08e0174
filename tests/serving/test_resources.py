"""/dev/shm sizing and the cgroup CPU limit (serving/resources.py): the formula on the
default repository, the sizes compose and the chart give, and the limit read from
cgroup v1 and v2 files as containers see them."""

from pathlib import Path

import pytest
import yaml

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


def test_the_largest_batches_of_the_default_repository():
    spec = ModelSpec(labels=tuple("0123456789"))
    pixels = 3 * 224 * 224  # uint8, between the two models
    image = 4 + spec.preprocessing.max_bytes  # a serialized TYPE_STRING element at its limit
    assert shm_needs(REPOSITORY) == {
        "classifier": MIB + 32 * (pixels + 4 * 10),  # pixels in, 10 FP32 scores out
        "preprocess": MIB + 32 * (image + pixels),
    }
    assert recommended_shm(REPOSITORY) == 768 * MIB  # 523 MiB + 25%, rounded up to 256 MiB


def test_compose_and_the_chart_give_what_the_default_repository_needs():
    size = recommended_shm(REPOSITORY) // MIB
    for path in ("docker-compose.yml", "deploy/docker/replicas.yml"):
        services = yaml.safe_load((ROOT / path).read_text())["services"]
        sizes = {s["shm_size"] for s in services.values() if "shm_size" in s}
        assert sizes == {f"{size}m"}, path
    values = yaml.safe_load((ROOT / "deploy/helm/resnet-triton/values.yaml").read_text())
    assert values["sharedMemory"] == f"{size}Mi"


def test_this_machine_holds_the_default_repository():
    check_shm(REPOSITORY)  # the tests' servers run here: /dev/shm must hold them


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


def test_onnx_runtime_threads_under_a_limit():
    assert onnx_threads(None) == 0  # no limit: ONNX Runtime's own choice
    assert onnx_threads(1.0) == 1
    assert onnx_threads(1.5) == 2  # on this 2-CPU machine
    assert onnx_threads(64.0) == 2  # never more than the CPUs the process may run on
    assert onnx_threads(0.2) == 1
