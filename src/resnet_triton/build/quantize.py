"""ONNX Runtime INT8 static quantization (QDQ) for the CPU target.

Activations are quantized as unsigned 8-bit and weights as signed 8-bit,
per output channel: the u8s8 pair that ONNX Runtime's x86 kernels (AVX-512
VNNI, AVX2) run fast. Signed activations ran slower than FP32 on this
machine; unsigned ones about 3x faster (perf/onnx_precision.py measures it).
The ranges come from MinMax calibration on real training images passed
through the shared preprocessing.

The weights use 7 of their 8 bits (`reduce_range`). On x86 CPUs without VNNI
(AVX2 only: Zen 2/3, older Xeons, most laptops) ONNX Runtime multiplies u8
activations by s8 weights with `vpmaddubsw`, which adds two products into a
saturating 16-bit sum: 255 * 127 * 2 overflows it, and the scores moved by up
to 0.23 (the INT8 gate allows 0.05). With weights in [-64, 64] the pair sum
stays within 16 bits on every x86 CPU by construction, at no cost in speed
there (the demo's resnet18 on an AVX2-only EPYC: max abs error 0.010 against
0.227, 93 img/s against 90; `make bench-precision` measures both). CPUs with VNNI
(`vpdpbusd`, 32-bit sums) never saturate; on them the range only costs the
weights one bit of precision, which the gate measures like any other error.
ONNX Runtime's quantize_static docs recommend the same: reduce_range=True
without VNNI, where it matters; it is harmless with it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process


@dataclass(frozen=True)
class Quantization:
    """The settings of `quantize_static`: the build hashes `asdict()` of the very object
    that `quantize_int8` turns into the call, so the content hash describes the call."""

    format: str = "QDQ"
    activations: str = "QUInt8"
    weights: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = True  # 7-bit weights: no 16-bit saturation without VNNI (above)
    calibration: str = "MinMax"

    def arguments(self) -> dict:
        """quantize_static's keyword arguments (names of onnxruntime's enums)."""
        return {
            "quant_format": QuantFormat[self.format],
            "activation_type": QuantType[self.activations],
            "weight_type": QuantType[self.weights],
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "calibrate_method": CalibrationMethod[self.calibration],
        }


U8S7 = Quantization()  # what the CPU target builds: u8 activations, 7-bit s8 weights


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, batches: Iterator[np.ndarray]):
        self.input_name = input_name
        self.batches = batches

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    input_name: str,
    batches: Iterator[np.ndarray],
    settings: Quantization = U8S7,
) -> None:
    """Write the INT8 model quantized with `settings`."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph cleanup
        quantize_static(
            str(prepared),
            str(out_path),
            _Batches(input_name, batches),
            **settings.arguments(),
        )
