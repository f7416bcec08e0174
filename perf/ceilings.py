"""In-process measurements of the perf/ commands, with neither Triton nor its client: the
model ceiling (ONNX Runtime alone) and the cost of the project's preprocessing."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from resnet_triton.preprocess import pixels_from_bytes


def onnxruntime_ceiling(onnx_path: Path, pixels: np.ndarray, batch: int, seconds: float) -> dict:
    """ONNX Runtime alone on preprocessed images: images/s and per-batch latency."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    chunk = np.resize(pixels, (batch, *pixels.shape[1:]))  # (batch, 3, crop, crop)
    session.run(None, {name: chunk})  # warm-up
    durations, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        tick = time.perf_counter()
        session.run(None, {name: chunk})
        durations.append(time.perf_counter() - tick)
    return {
        "batch": batch,
        "throughput_img_s": round(batch * len(durations) / (time.perf_counter() - start), 1),
        "p50_ms": round(float(np.percentile(durations, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(durations, 99)) * 1000, 1),
    }


def _preprocess_rounds(payloads: list[bytes], cfg, rounds: int) -> int:
    for _ in range(rounds):
        for data in payloads:
            pixels_from_bytes([data], cfg)
    return rounds * len(payloads)


def preprocessing_ms(payloads: list[bytes], cfg, workers: int, seconds: float) -> float:
    """Wall ms per image of the project's preprocessing (decode, crop, 8-bit pixels) with
    `workers` processes, as Triton runs it (each preprocess instance is its own process)."""
    rounds = max(1, round(seconds * 1000 / 5 / len(payloads)))  # about `seconds` at 5 ms
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_preprocess_rounds, [payloads] * workers, [cfg] * workers, [1] * workers))
        start = time.perf_counter()
        done = sum(
            pool.map(_preprocess_rounds, [payloads] * workers, [cfg] * workers, [rounds] * workers)
        )
        return (time.perf_counter() - start) * 1000 / done
