"""Build manifests and the content hash that decides whether a build can be skipped.

Every published model file has `<file>.manifest.json` beside it. Its
`content_hash` is the SHA-256 of everything the artifact depends on: the
FP32 ONNX file, the precision, the target and runtime version (ONNX Runtime,
or TensorRT and the GPU's compute capability), the optimization profile, the
build flags and the calibration images. The same inputs give the same hash,
so a build whose hash matches the published manifest (and whose published
file still matches its recorded SHA-256) has nothing to do.
"""

from __future__ import annotations

import hashlib
import json
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


def manifest_path(model_file: Path) -> Path:
    return model_file.with_name(model_file.name + ".manifest.json")


def write_manifest(model_file: Path, manifest: dict) -> Path:
    path = manifest_path(model_file)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def read_manifest(model_file: Path) -> dict | None:
    path = manifest_path(model_file)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a damaged manifest means: rebuild


def is_up_to_date(model_file: Path, key: str) -> bool:
    """The published file was built from the same inputs and is intact."""
    manifest = read_manifest(model_file)
    return (
        manifest is not None
        and manifest.get("content_hash") == key
        and model_file.is_file()
        and manifest.get("output_sha256") == file_sha256(model_file)
    )
