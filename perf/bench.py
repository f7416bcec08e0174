"""`make bench`: NVIDIA's perf_analyzer against the published ensemble, with real images.

Starts the local Triton server on free ports, feeds perf_analyzer the
validation images (JPEG/PNG bytes, not random data), sweeps client
concurrency over gRPC, and measures in the same run the ceiling: ONNX
Runtime in-process on the same model with already preprocessed images.
Writes perf_analyzer's CSV and a JSON summary to --out and prints a table.

A first version: issue 6 adds HTTP, client batch sweeps and baselines.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from resnet_triton.build import gate_images
from resnet_triton.export import spec_from_onnx
from resnet_triton.repository import ONNX_FILE
from resnet_triton.server import Ports, TritonServer, preflight


def serialized_bytes(data: bytes) -> bytes:
    """A TYPE_STRING element as Triton serializes it: 4-byte little-endian length, then data."""
    return struct.pack("<I", len(data)) + data


def write_input_data(paths: list[str], input_name: str, target: Path) -> Path:
    entries = [
        {
            input_name: {
                "content": {
                    "b64": base64.b64encode(serialized_bytes(Path(p).read_bytes())).decode()
                },
                "shape": [1],
            }
        }
        for p in paths
    ]
    target.write_text(json.dumps({"data": entries}))
    return target


def perf_analyzer_env() -> dict[str, str]:
    import nvidia.cuda_runtime  # libcudart.so.12, which perf_analyzer links against

    lib = Path(nvidia.cuda_runtime.__path__[0]) / "lib"
    old = os.environ.get("LD_LIBRARY_PATH", "")
    return {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{old}" if old else str(lib)}


def run_perf_analyzer(model, ports, input_data, concurrency, csv_path, interval_ms) -> list[dict]:
    command = [
        str(Path(sys.executable).parent / "perf_analyzer"),
        "-m", model,
        "-u", f"localhost:{ports.grpc}",
        "-i", "grpc",
        "--input-data", str(input_data),
        "--concurrency-range", f"{concurrency[0]}:{concurrency[1]}",
        "--measurement-interval", str(interval_ms),
        "--percentile", "99",
        "-f", str(csv_path),
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, env=perf_analyzer_env(), check=True)
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    return [
        {
            "concurrency": int(row["Concurrency"]),
            "throughput_img_s": float(row["Inferences/Second"]),
            "p50_ms": float(row["p50 latency"]) / 1000,
            "p99_ms": float(row["p99 latency"]) / 1000,
        }
        for row in rows
    ]


def onnxruntime_ceiling(onnx_path: Path, pixels: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second of ONNX Runtime alone on preprocessed images."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    chunk = np.resize(pixels, (batch, *pixels.shape[1:]))  # (batch, 3, crop, crop)
    session.run(None, {name: chunk})  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: chunk})
        done += batch
    return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--images", type=Path, default=Path("artifacts/demo/digits/val"))
    parser.add_argument("--count", type=int, default=64, help="distinct images fed to perf")
    parser.add_argument("--concurrency", default="1:4", help="perf_analyzer range start:end")
    parser.add_argument("--interval-ms", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    ensemble = preflight(args.repository)[0]
    onnx_path = next(args.repository.glob(f"*/1/{ONNX_FILE}"))
    spec = spec_from_onnx(onnx_path)
    if not args.images.is_dir():
        print(f"error: image folder {args.images} does not exist; run `make demo` first")
        return 1
    pixels, paths = gate_images(args.images, spec, args.count)
    args.out.mkdir(parents=True, exist_ok=True)
    input_data = write_input_data(paths, spec.names.image, args.out / "input_data.json")
    concurrency = [int(c) for c in args.concurrency.split(":")]

    ceiling = onnxruntime_ceiling(onnx_path, pixels, spec.batching.preferred_batch_sizes[0], 10)
    with TritonServer(args.repository, Ports.free(), log_path=args.out / "triton.log") as server:
        server.wait_ready([ensemble])
        rows = run_perf_analyzer(
            ensemble, server.ports, input_data, concurrency, args.out / "ensemble.csv",
            args.interval_ms,
        )  # fmt: skip

    best = max(r["throughput_img_s"] for r in rows)
    summary = {
        "model": spec.arch,
        "images": len(paths),
        "onnxruntime_in_process_img_s": round(ceiling, 1),
        "ensemble": rows,
        "ensemble_best_over_ceiling": round(best / ceiling, 3),
        "cpu_count": os.cpu_count(),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{spec.arch}, {len(paths)} real images, gRPC; figures in {args.out}/summary.json")
    print(
        f"ONNX Runtime in-process (batch {spec.batching.preferred_batch_sizes[0]}, "
        f"no preprocessing): {ceiling:.1f} img/s"
    )
    print(f"{'concurrency':>11} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(
            f"{r['concurrency']:>11} {r['throughput_img_s']:>8.1f} {r['p50_ms']:>8.1f} "
            f"{r['p99_ms']:>8.1f}"
        )
    print(f"ensemble best / ONNX Runtime ceiling: {summary['ensemble_best_over_ceiling']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
