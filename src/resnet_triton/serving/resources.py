"""What a server needs from its host or container: /dev/shm and CPUs.

/dev/shm: every Python-backend model instance has a stub process that exchanges
tensors with Triton through a shared-memory region in /dev/shm (1 MiB to start,
grown as needed). Its largest batch holds max_batch_size inputs and outputs there at
once; an encoded image (TYPE_STRING) takes up to the model's `max_bytes`. When /dev/shm
runs out, requests fail deep in the backend (server#4869, #5681, #6195), so `serve`
checks at start (`check_shm`). compose's `shm_size` and the chart's `sharedMemory` are
`recommended_shm` of the default repository (tests/serving/test_resources.py).

CPUs: ONNX Runtime sizes its thread pool by the host's cores, not by the container's
CPU limit (onnxruntime_backend#34, #265): on a 64-core node a 2-CPU pod would run 32
threads on 2 CPUs' time. `cpu_limit` reads the cgroup's limit (v2 cpu.max, v1
cfs_quota_us) for the classifier to size its pool by.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from resnet_triton.errors import UserError
from resnet_triton.serving.repository import read_config

MIB = 1024 * 1024
REGION_START = 1 * MIB  # the Python backend's shm-default-byte-size
STRING_PREFIX = 4  # a serialized TYPE_STRING element: 4-byte length, then the bytes
DTYPE_BYTES = {"TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_FP16": 2, "TYPE_FP32": 4, "TYPE_INT32": 4,
               "TYPE_INT64": 8, "TYPE_FP64": 8, "TYPE_BOOL": 1}  # fmt: skip
HEADROOM = 1.25  # recommended_shm: room for fragmentation and a second batch in transit
ROUND_TO = 256 * MIB


def _tensor_bytes(tensor, params) -> int:
    """The bytes one batch item of `tensor` (a ModelInput or ModelOutput) takes."""
    dtype = mc.DataType.Name(tensor.data_type)
    if dtype == "TYPE_STRING":
        return STRING_PREFIX + int(params["max_bytes"].string_value)
    return DTYPE_BYTES[dtype] * math.prod(tensor.dims)


def shm_needs(repository: Path) -> dict[str, int]:
    """Bytes of /dev/shm each Python-backend model's largest batches take, by model."""
    needs = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        config = read_config(path)
        if config.backend != "python":
            continue
        instances = sum(group.count or 1 for group in config.instance_group) or 1
        batch = max(config.max_batch_size, 1)
        items = sum(_tensor_bytes(t, config.parameters) for t in [*config.input, *config.output])
        needs[config.name] = instances * (REGION_START + batch * items)
    return needs


def recommended_shm(repository: Path) -> int:
    """shm_needs with headroom, rounded up to 256 MiB: what to give the container."""
    total = sum(shm_needs(repository).values()) * HEADROOM
    return max(ROUND_TO, math.ceil(total / ROUND_TO) * ROUND_TO)


def check_shm(repository: Path, shm: Path = Path("/dev/shm"), free: int | None = None) -> None:
    """Refuse to start where /dev/shm cannot hold the largest batches, with the size.
    free: its free bytes (None: what the file system says now)."""
    needs = shm_needs(repository)
    if not needs:
        return
    if free is None:
        stat = os.statvfs(shm)
        free = stat.f_bavail * stat.f_frsize
    if free < sum(needs.values()):
        parts = ", ".join(f"{name} {need / MIB:.0f} MiB" for name, need in needs.items())
        raise UserError(
            f"{shm} has {free / MIB:.0f} MiB free; the Python-backend models' largest batches "
            f"need {sum(needs.values()) / MIB:.0f} MiB ({parts}: max_batch_size inputs and "
            f"outputs each, encoded images at max_bytes). Give the container "
            f"{recommended_shm(repository) // MIB} MiB: docker run --shm-size, compose "
            f"shm_size, the chart's sharedMemory; or lower max_batch_size or max_bytes"
        )


def cpu_limit(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self")) -> float | None:
    """CPUs this process's cgroup may use (quota / period), or None where unlimited.

    cgroup v2: the tightest cpu.max from this process's cgroup up to the root of the
    hierarchy it sees (a container sees its own cgroup as the root). v1: cpu.cfs_quota_us
    over cpu.cfs_period_us.
    """
    try:
        lines = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":  # v2
            folder = root / path.lstrip("/")
            while True:
                limits.append(_v2_limit(folder / "cpu.max"))
                if folder == root or root not in folder.parents:
                    break
                folder = folder.parent
        elif "cpu" in controllers.split(","):  # v1
            folder = root / "cpu" / path.lstrip("/")
            limits.append(_v1_limit(folder) or _v1_limit(root / "cpu"))
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def _v2_limit(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period


def onnx_threads(limit: float | None, cpus: int | None = None) -> int:
    """Intra-op threads for ONNX Runtime under a cgroup CPU limit: the `cpus` this process
    may run on (None: its affinity now), capped by the limit rounded up (1.5 CPUs of time
    keep 2 threads busy part of the time). 0 without a limit: ONNX Runtime's own choice,
    one per physical core."""
    if limit is None:
        return 0
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    return max(1, min(cpus, math.ceil(limit)))
