"""What one build is asked for (BuildOptions), what it resolves to before any work (Plan),
and what it reports (BuildResult); command.py makes and runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from resnet_triton.build import engine
from resnet_triton.build.manifest import content_hash
from resnet_triton.build.quantize import U8S7, Quantization
from resnet_triton.build.verify import GateReport
from resnet_triton.serving.config import ServingConfig
from resnet_triton.spec import ModelSpec

# cpu: ONNX Runtime; gpu: TensorRT plans; pytorch: TorchScript for Triton's PyTorch backend.
TARGETS = ("auto", "cpu", "gpu", "pytorch")
PRECISIONS = {"cpu": ("fp32", "int8"), "gpu": ("fp32", "fp16", "int8"), "pytorch": ("fp32",)}


@dataclass(frozen=True)
class BuildOptions:
    checkpoint: Path
    repository: Path = Path("model_repository")
    work_dir: Path = Path("artifacts/build")
    precision: str = "fp32"
    target: str = "auto"
    images: Path | None = None  # held-out images for the gates; default: the run's val split
    calibration: Path | None = None  # INT8 calibration images; default: the run's train split
    calibration_images: int = 128
    gate_images: int = 64
    agreement_images: int = 1000
    opt_batch: int | None = None  # TensorRT profile; default from the serving config
    workspace_gib: float = 4.0
    hardware_compatible: bool = False
    version_compatible: bool = False
    onnx: Path | None = None
    env_path: str | None = None
    serving: ServingConfig = ServingConfig()  # rendered into the repository's configs
    quantization: Quantization = U8S7  # the cpu target's INT8 (ONNX Runtime)
    force: bool = False
    torchscript: bool = False  # also write and gate <work_dir>/model.pt
    torch_export: bool = False  # also write and gate <work_dir>/model.pt2


@dataclass(frozen=True)
class BuildResult:
    skipped: bool  # the published model was built from the same inputs: configs re-rendered
    content_hash: str
    published: Path  # the model file in the repository
    spec: ModelSpec
    reports: list[GateReport] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """What one build will make, resolved before any work: its content hash decides
    whether there is anything to do."""

    target: str  # cpu, gpu or pytorch
    gpu: engine.Gpu | None
    spec: ModelSpec
    model: nn.Module
    payload: dict  # the checkpoint's: the training run's config
    settings: engine.PlanSettings
    calibration: list[str]  # INT8 calibration image files
    inputs: dict  # everything the content hash covers (manifest.py)
    filename: str  # of the model file in the classifier's version folder
    torch_formats: tuple[str, ...] = ()  # PyTorch files written and gated (torch_artifacts)

    @property
    def key(self) -> str:
        return content_hash(self.inputs)
