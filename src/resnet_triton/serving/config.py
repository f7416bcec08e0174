"""How a deployment serves the model: every setting that tunes serving without retraining.

The model contract (architecture, labels, preprocessing, names, max batch size)
travels with the checkpoint and the ONNX file in `ModelSpec`. What is here is
read when the repository is rendered: by `resnet-triton render` and `build`
(`--serving FILE`, YAML), and per target in build/pipeline.yaml (`serving:`).
The defaults below are the one place they are set; perf/README.md records the
measurements behind them (`make bench-batching`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from resnet_triton.spec import ModelSpec, SpecError, fields_of, read_yaml

PREPROCESS_BACKENDS = ("python", "dali")
LAYOUTS = ("ensemble", "fused")


@dataclass(frozen=True)
class ServingConfig:
    # Triton's dynamic batcher, on the preprocess and classifier models; each model
    # waits up to its own delay for a fuller batch (0: runs what is queued at once,
    # which under load is a batch of everything that arrived while it was busy).
    # Measured on 2 CPUs (perf/README.md): no delays and no preferred sizes are
    # fastest at every concurrency from 1 to 8; a GPU host may want a delay.
    preferred_batch_sizes: tuple[int, ...] = ()
    preprocess_queue_delay_us: int = 0
    classifier_queue_delay_us: int = 0
    # Model instances per server (instance_group count).
    preprocess_instances: int = 1
    classifier_instances: int = 1
    # The CPU classifier's ONNX Runtime: intra-op threads (0: one per physical core, at
    # most the container's CPU limit: serving/resources.py),
    # and whether idle threads spin (off: they sleep, leaving the cores to preprocessing).
    intra_op_threads: int = 0
    allow_spinning: bool = False
    # The CPU classifier's scheduling priority (nice, 0-19): above 0, the preprocess
    # model (the other process) gets the cores first when both have work, and the
    # classifier runs fuller batches in what is left. 10 won on 2 CPUs at every
    # concurrency for INT8 and from c2 on for FP32 (perf/README.md).
    classifier_nice: int = 10
    # Where images are decoded and resized: "python" (the Python backend, every host)
    # or "dali" (Triton's DALI backend, in the NGC image: nvJPEG and the GPU on the GPU
    # target, DALI's CPU operators on the CPU target; serving/dali.py says what differs).
    preprocess_backend: str = "python"
    # DALI's worker threads per preprocess instance (preprocess_backend: dali).
    dali_threads: int = 4
    # Warm every model up at load (a real photo, zero tensors), so that the first
    # requests do not pay for lazy initialization and a broken model fails at start.
    warmup: bool = True
    # How the models are laid out. "ensemble": the preprocess and classifier models joined
    # by an ensemble (every target; the classifier also takes pixels alone, as NVIDIA's
    # image_client.py sends them). "fused": one Python-backend model decodes and runs ONNX
    # Runtime in the same process, under the ensemble's name and with its inputs and
    # outputs, so clients do not change (CPU target, python preprocessing): no hand-off
    # between processes, each instance 1 ONNX Runtime thread, and an instance alone at work
    # on one image uses every core. On 2 CPUs it beat the ensemble and every framework of
    # the race at every concurrency, at 1.5-2x the ensemble's memory (perf/README.md).
    layout: str = "ensemble"
    # layout fused: instances (processes; each decodes and scores its own batches) and the
    # dynamic batcher's preferred sizes (2 kept p99 lowest at the same throughput on 2 CPUs);
    # its queue delay is classifier_queue_delay_us, its lone-image threads intra_op_threads.
    fused_instances: int = 2
    fused_preferred_batch_sizes: tuple[int, ...] = (2,)
    # layout ensemble, cpu target: the ensemble passes the encoded images to the classifier
    # too, so that it can capture live traffic when the server's environment switches
    # capture on (serving/capture.py). Off by default: it costs /dev/shm, the classifier's
    # largest batch of encoded images (serving/resources.py). The fused model has the
    # images already and needs no setting.
    capture: bool = False

    def validate(self, spec: ModelSpec) -> None:
        """Errors name the field; batch sizes are checked against the model's limit."""
        limit = spec.max_batch_size
        for name in ("preferred_batch_sizes", "fused_preferred_batch_sizes"):
            outside = [b for b in getattr(self, name) if not 1 <= b <= limit]
            if outside:
                raise SpecError(f"serving.{name} {outside} lie outside 1..max_batch_size ({limit})")
        ranges = {
            "preprocess_queue_delay_us": (0, None), "classifier_queue_delay_us": (0, None),
            "preprocess_instances": (1, None), "classifier_instances": (1, None),
            "intra_op_threads": (0, None), "classifier_nice": (0, 19),
            "dali_threads": (1, None), "fused_instances": (1, None),
        }  # fmt: skip
        for name, (least, most) in ranges.items():
            value = getattr(self, name)
            if (
                not isinstance(value, int) or isinstance(value, bool) or value < least
                or (most is not None and value > most)
            ):  # fmt: skip
                wanted = f">= {least}" if most is None else f"in {least}..{most}"
                raise SpecError(f"serving.{name} must be an integer {wanted}, got {value!r}")
        if self.preprocess_backend not in PREPROCESS_BACKENDS:
            raise SpecError(
                f"serving.preprocess_backend must be one of {', '.join(PREPROCESS_BACKENDS)}, "
                f"got {self.preprocess_backend!r}"
            )
        if self.layout not in LAYOUTS:
            raise SpecError(
                f"serving.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}"
            )
        if self.layout == "fused" and self.preprocess_backend != "python":
            raise SpecError(
                "serving.layout: fused decodes in the Python backend; it cannot run with "
                f"serving.preprocess_backend {self.preprocess_backend!r}"
            )
        interpolation = spec.preprocessing.interpolation
        if self.preprocess_backend == "dali" and interpolation != "bilinear":
            raise SpecError(
                f"serving.preprocess_backend: dali resizes as Pillow does for bilinear only; this "
                f"model's preprocessing.interpolation is {interpolation!r} (serving/dali.py)"
            )
        if self.capture is True and self.preprocess_backend != "python":
            raise SpecError(
                "serving.capture: the classifier captures the encoded images the Python "
                f"preprocess model takes, not preprocess_backend {self.preprocess_backend!r}'s"
            )
        for name in ("allow_spinning", "warmup", "capture"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(
                    f"serving.{name} must be true or false, got {getattr(self, name)!r}"
                )

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "serving") -> ServingConfig:
        return cls(**fields_of(cls, data or {}, where))

    @classmethod
    def load(cls, path: Path) -> ServingConfig:
        return cls.from_dict(read_yaml(path, "serving config"), f"serving config {path}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
