"""`make bench-serve`: NVIDIA's perf_analyzer against the served models, with real photos.

In one run, on the published model_repository and the same photos (JPEG and
PNG from scikit-image and scikit-learn):
  ensemble     encoded photos in, labels out: decode + preprocess + classify
  classifier   the classifier alone, fed the same photos already preprocessed
  ceiling      ONNX Runtime in-process on those tensors, no server at all
perf_analyzer sweeps client concurrency over gRPC for both served models; the
report gives throughput, p50/p99 latency, the ensemble/classifier ratio (the
cost of preprocessing and the extra hop), and the preprocess model's own
compute time per image from Triton's statistics.
Writes <out>/ensemble.csv and classifier.csv (perf_analyzer's export) and
<out>/summary.json.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient

from resnet_triton.data import package_photos
from resnet_triton.export import spec_from_onnx
from resnet_triton.preprocess import preprocess_files
from resnet_triton.repository import ONNX_FILE, serialized_bytes
from resnet_triton.server import Ports, TritonServer, preflight


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def ensemble_input(paths: list[Path], name: str, target: Path) -> Path:
    # A TYPE_STRING element is given as its serialized form: length prefix, then bytes.
    entries = [
        {name: {"content": b64(serialized_bytes(p.read_bytes())), "shape": [1]}} for p in paths
    ]
    target.write_text(json.dumps({"data": entries}))
    return target


def classifier_input(pixels: np.ndarray, name: str, target: Path) -> Path:
    entries = [
        {name: {"content": b64(image.astype("<f4").tobytes()), "shape": list(image.shape)}}
        for image in pixels
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
        "--concurrency-range", concurrency,
        "--measurement-interval", str(interval_ms),
        "--percentile", "99",
        # Two shared cores are noisy: accept 25% spread between windows.
        "--stability-percentage", "25",
        "--max-trials", "8",
        "-f", str(csv_path),
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    subprocess.run(command, env=perf_analyzer_env(), check=True, stdout=subprocess.DEVNULL)
    with open(csv_path) as f:
        return [
            {
                "concurrency": int(row["Concurrency"]),
                "throughput_img_s": float(row["Inferences/Second"]),
                "p50_ms": float(row["p50 latency"]) / 1000,
                "p99_ms": float(row["p99 latency"]) / 1000,
            }
            for row in csv.DictReader(f)
        ]


def compute_per_image_ms(client, model: str) -> tuple[float, int]:
    """(compute time per inference in ms, inferences) from Triton's statistics."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    infer = stats["inference_stats"]["compute_infer"]
    count = int(stats.get("inference_count", 0))
    return (int(infer.get("ns", 0)) / max(count, 1) / 1e6, count)


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


def best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: r["throughput_img_s"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--concurrency", default="2:8:2", help="perf_analyzer start:end:step")
    parser.add_argument("--interval-ms", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    ensemble = preflight(args.repository)[0]
    onnx_path = next(args.repository.glob(f"*/1/{ONNX_FILE}"))
    spec = spec_from_onnx(onnx_path)
    photos = package_photos()
    pixels = preprocess_files(photos, spec.preprocessing)  # (n, 3, crop, crop)
    args.out.mkdir(parents=True, exist_ok=True)
    inputs = {
        ensemble: ensemble_input(photos, spec.names.image, args.out / "ensemble_input.json"),
        spec.names.classifier: classifier_input(
            pixels, spec.names.pixels, args.out / "classifier_input.json"
        ),
    }

    ceiling = onnxruntime_ceiling(onnx_path, pixels, max(spec.batching.preferred_batch_sizes), 10)
    results, preprocess_ms = {}, None
    with TritonServer(args.repository, Ports.free(), log_path=args.out / "triton.log") as server:
        server.wait_ready([ensemble])
        client = grpcclient.InferenceServerClient(f"localhost:{server.ports.grpc}")
        for model, input_data in inputs.items():
            kind = "ensemble" if model == ensemble else "classifier"
            results[kind] = run_perf_analyzer(
                model, server.ports, input_data, args.concurrency, args.out / f"{kind}.csv",
                args.interval_ms,
            )  # fmt: skip
            if kind == "ensemble":
                preprocess_ms = compute_per_image_ms(client, spec.names.preprocess)
        client.close()

    ratio = (
        best(results["ensemble"])["throughput_img_s"]
        / best(results["classifier"])["throughput_img_s"]
    )
    summary = {
        "model": spec.arch,
        "onnx": str(onnx_path),
        "photos": [p.name for p in photos],
        "cpu_count": os.cpu_count(),
        "ensemble": results["ensemble"],
        "classifier": results["classifier"],
        "onnxruntime_in_process_img_s": round(ceiling, 1),
        "ensemble_over_classifier": round(ratio, 3),
        "preprocess_compute_ms_per_image": round(preprocess_ms[0], 2),
        "preprocess_images_counted": preprocess_ms[1],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    print(f"\n{spec.arch}, {len(photos)} real photos, gRPC, {os.cpu_count()} CPUs; "
          f"{args.out}/summary.json")  # fmt: skip
    print(f"{'model':<11} {'concurrency':>11} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for kind, rows in results.items():
        for r in rows:
            print(f"{kind:<11} {r['concurrency']:>11} {r['throughput_img_s']:>8.1f} "
                  f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")  # fmt: skip
    print(f"ONNX Runtime in-process, batch {max(spec.batching.preferred_batch_sizes)}: "
          f"{ceiling:.1f} img/s")  # fmt: skip
    print(f"preprocess model compute under load: {preprocess_ms[0]:.2f} ms per image "
          "(Triton statistics; wall time, sharing the cores with the classifier)")  # fmt: skip
    print(f"ensemble / classifier alone (best of each): {ratio:.2f} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
