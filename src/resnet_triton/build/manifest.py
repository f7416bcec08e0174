"""The manifest beside every published model file, and the content hash that decides
whether a build can be skipped. This module is the format's one owner: build writes
manifests, serving (which plans to serve) and the pipeline (what to publish) read them
through `Manifest`.

Every published model file has `<file>.manifest.json` beside it. Its
`content_hash` is the SHA-256 of everything the artifact depends on, known
before any work is done: the checkpoint and the exporter (or a given ONNX
file), the precision, the target and runtime version (ONNX Runtime, or
TensorRT and the GPU's compute capability), the optimization profile, the
build flags, the quantization settings and the calibration images. The same
inputs give the same hash, so a build whose hash matches the published
manifest (and whose published file still matches its recorded SHA-256) has
nothing to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(inputs: dict) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def files_sha256(paths: list[str]) -> str:
    """One hash over a list of files (their contents, in order)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(file_sha256(Path(path)).encode())
    return digest.hexdigest()


# The flags by which ONNX Runtime (and oneDNN) pick their kernels at run time: INT8
# dot products (AVX2 without VNNI saturates in 16 bits; VNNI and AMX do not), and
# their ARM counterparts. A gate measures the kernels of the CPU it ran on.
KERNEL_FEATURES = (
    "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "bf16",
)  # fmt: skip


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """This CPU's KERNEL_FEATURES, from the first `flags` (x86) or `Features` (ARM) line of
    `cpuinfo`; empty where there is none (macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return [f for f in KERNEL_FEATURES if f in present]
    return []


def cpu_name() -> str:
    return platform.processor() or platform.machine()


def manifest_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".manifest.json")


@dataclass(frozen=True)
class Manifest:
    """How and from what one published model file was built, and the gates it passed."""

    content_hash: str
    inputs: dict  # everything the content hash covers
    precision: str
    target: str  # "cpu" (ONNX Runtime) or "gpu" (TensorRT)
    output_sha256: str  # the model file's own hash: a damaged file is rebuilt
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    cpu: str | None = None  # the build machine's processor
    cpu_features: list[str] | None = None  # its ISA flags the kernels pick by (cpu_features())
    gpu: str | None = None  # the GPU a plan was built on; None for the cpu target
    compute_capability: str | None = None
    build_seconds: float = 0.0
    built_at: str = ""
    gates: list[dict] = field(default_factory=list)

    @property
    def flags(self) -> dict:
        """A plan's TensorRT build flags (hardware_compatible, version_compatible)."""
        return self.inputs.get("flags", {})

    def write(self, model_file: Path) -> Path:
        path = manifest_path(model_file)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, model_file: Path) -> Manifest | None:
        """The manifest of `model_file`; None when it is missing or damaged (rebuild)."""
        path = manifest_path(model_file)
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, json.JSONDecodeError, TypeError):
            return None

    def describes(self, model_file: Path) -> bool:
        """`model_file` is the very file this manifest was written for (intact)."""
        return model_file.is_file() and self.output_sha256 == file_sha256(model_file)


def is_up_to_date(model_file: Path, key: str) -> bool:
    """The published file was built from the same inputs and is intact."""
    manifest = Manifest.read(model_file)
    return manifest is not None and manifest.content_hash == key and manifest.describes(model_file)
