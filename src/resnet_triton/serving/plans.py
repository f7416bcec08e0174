"""The TensorRT plans published in a repository, as their manifests describe them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from resnet_triton.build.manifest import Manifest


@dataclass(frozen=True)
class Plans:
    """The TensorRT plans published for the classifier, as their manifests describe them."""

    by_capability: dict[str, str] = field(default_factory=dict)  # "9.0" -> "model.sm90.plan"
    # A hardware-compatible (Ampere-plus) plan, for every GPU without a plan of its own;
    # Triton's default file name, model.plan, is never published.
    portable: str | None = None
    # A version-compatible plan loads only with TENSORRT_BACKEND_CONFIG given to Triton.
    version_compatible: bool = False


TENSORRT_BACKEND_CONFIG = "--backend-config=tensorrt,version-compatible=true"


def published_plans(version_dir: Path) -> Plans:
    """The plans in a classifier version folder, from the manifests beside them."""
    manifests = {
        plan.name: manifest
        for plan in sorted(version_dir.glob("*.plan"))
        if (manifest := Manifest.read(plan)) is not None
    }
    portable = [name for name, m in manifests.items() if m.flags.get("hardware_compatible")]
    return Plans(
        by_capability={m.compute_capability: name for name, m in manifests.items()},
        portable=portable[0] if portable else None,
        version_compatible=any(m.flags.get("version_compatible") for m in manifests.values()),
    )


def backend_flags(repository: Path) -> list[str]:
    """tritonserver flags that the published models of `repository` need."""
    version_dirs = {p.parent for p in Path(repository).glob("*/*/*.plan")}
    needed = any(published_plans(d).version_compatible for d in version_dirs)
    return [TENSORRT_BACKEND_CONFIG] if needed else []
