"""ONNX Runtime INT8 static quantization (QDQ) for the CPU target.

Activations are quantized as unsigned 8-bit and weights as signed 8-bit,
per output channel: the u8s8 pair that ONNX Runtime's x86 kernels (AVX-512
VNNI, AVX2) run fast. Signed activations ran slower than FP32 on this
machine; unsigned ones about 3x faster (perf/onnx_precision.py measures it).
The ranges come from MinMax calibration on real training images passed
through the shared preprocessing.
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
    calibration: str = "MinMax"

    def arguments(self) -> dict:
        """quantize_static's keyword arguments (names of onnxruntime's enums)."""
        return {
            "quant_format": QuantFormat[self.format],
            "activation_type": QuantType[self.activations],
            "weight_type": QuantType[self.weights],
            "per_channel": self.per_channel,
            "calibrate_method": CalibrationMethod[self.calibration],
        }


U8S8 = Quantization()  # what the CPU target builds


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
    settings: Quantization = U8S8,
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
