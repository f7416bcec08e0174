"""Which precision a training run computes in: the fast one on the machine at hand.

`--amp` unset (the default, `amp: null` in YAML) follows the machine: fp16 autocast
with loss scaling on CUDA; on a CPU, bf16 autocast where oneDNN has bfloat16 kernels
for it (AVX-512, AVX-NE-CONVERT or AMX; `native_bf16`), FP32 elsewhere. Without them
oneDNN emulates bfloat16: a resnet18 step at 224 px ran 14x slower than in FP32 on an
AVX2 AMD EPYC (issue 35). `--amp` forces autocast (with a warning where bf16 is
emulated), `--no-amp` FP32.

The decision asks oneDNN rather than timing a probe: the same machine then always
makes the same choice, which a one-second measurement on a busy machine would not.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class Precision:
    """What the loop's autocast runs in (dtype None: no autocast, FP32), and why."""

    dtype: torch.dtype | None
    reason: str
    warning: str | None = None  # said once beside the reason: a forced choice that is slow

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]

    @property
    def line(self) -> str:
        what = "fp32" if self.dtype is None else f"{self.name} autocast"
        return f"precision: {what} ({self.reason})"

    def say(self) -> None:
        """The line (rank 0 says it), and the warning where the choice is slow."""
        tqdm.write(self.line)
        if self.warning:
            tqdm.write(f"warning: {self.warning}", file=sys.stderr)


def native_bf16() -> bool:
    """Whether oneDNN has bfloat16 kernels for this CPU (without, bf16 is emulated)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build of PyTorch without oneDNN
        return False


# The reasons said in the line; bfloat16 kernels in oneDNN need AVX-512, AVX-NE-CONVERT
# or AMX (ideep::has_bf16_type_support, behind _is_mkldnn_bf16_supported).
NATIVE = "oneDNN has bfloat16 kernels for this CPU; --no-amp for fp32"
EMULATED = (
    "this CPU has no bfloat16 kernels in oneDNN (AVX-512, AVX-NE-CONVERT or AMX): "
    "bf16 autocast would be emulated, about 14x slower; --amp forces it"
)
FORCED_EMULATED = (
    "--amp on a CPU without bfloat16 kernels in oneDNN: bf16 autocast is emulated here, "
    "about 14x slower than fp32 on an AVX2 CPU; leave --amp unset for the fast choice"
)


def resolve(amp: bool | None, device: torch.device) -> Precision:
    """`amp` as configured (None: follow the machine) on `device`."""
    if amp is False:
        return Precision(None, "--no-amp")
    if device.type == "cuda":
        return Precision(torch.float16, f"with loss scaling, {'--amp' if amp else 'CUDA'}; "
                                        "--no-amp for fp32")  # fmt: skip
    native = native_bf16()
    if amp is True:
        return Precision(torch.bfloat16, "--amp", None if native else FORCED_EMULATED)
    return Precision(torch.bfloat16, NATIVE) if native else Precision(None, EMULATED)
