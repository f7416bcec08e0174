"""Shared pieces of the perf/ commands that talk to Triton: perf_analyzer inputs from real
photos, running perf_analyzer, Triton statistics. The in-process measurements (the
ceilings, the cost of preprocessing) are in ceilings.py."""

from __future__ import annotations

import base64
import csv
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from resnet_triton.build.export import spec_from_onnx
from resnet_triton.serving.repository import ONNX_FILE, serialized_bytes
from resnet_triton.serving.serve import proc_stat, python_stubs
from resnet_triton.serving.server import preflight
from resnet_triton.spec import ModelSpec

PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"  # NVIDIA's, from tritonclient
REDACTED = "<api key>"  # what printed command lines show in place of the key


def published_model(repository: Path) -> tuple[Path, ModelSpec]:
    """(the published ONNX file, its spec); errors name what is missing."""
    preflight(repository)
    onnx_path = next(repository.glob(f"*/1/{ONNX_FILE}"))
    return onnx_path, spec_from_onnx(onnx_path)


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
        {name: {"content": b64(image.tobytes()), "shape": list(image.shape)}} for image in pixels
    ]
    target.write_text(json.dumps({"data": entries}))
    return target


def perf_analyzer_env() -> dict[str, str]:
    import nvidia.cuda_runtime  # libcudart.so.12, which perf_analyzer links against

    lib = Path(nvidia.cuda_runtime.__path__[0]) / "lib"
    old = os.environ.get("LD_LIBRARY_PATH", "")
    return {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{old}" if old else str(lib)}


def key_header(api_key: str | None) -> list[str]:
    """perf_analyzer's flag for the proxy's inference key. Its --help says -H is "ignored for
    GRPC requests", but 2.51 sends it as gRPC metadata as well (tests/test_perf_keys.py
    records both). No space after the colon: the value is sent as written after it, and
    a gRPC value would start with the space."""
    return ["-H", f"authorization:Bearer {api_key}"] if api_key else []


def shown(command: list[str], api_key: str | None) -> str:
    """A command line to print or save: the key replaced by REDACTED."""
    text = shlex.join(command)
    return text.replace(api_key, REDACTED) if api_key else text


def run_perf_analyzer(
    model, ports, input_data, concurrency, csv_path, interval_ms, protocol="grpc", batch=1,
    host="localhost", api_key=None,
) -> list[dict]:  # fmt: skip
    """perf_analyzer over `concurrency` ("start:end:step") against `host` (its ports); its
    CSV rows, in ms. api_key: the proxy's inference key, sent with every request."""
    url = f"{host}:{ports.grpc if protocol == 'grpc' else ports.http}"
    command = [
        str(PERF_ANALYZER),
        "-m", model,
        "-u", url,
        "-i", protocol,
        "-b", str(batch),
        "--input-data", str(input_data),
        "--concurrency-range", concurrency,
        "--measurement-interval", str(interval_ms),
        "--percentile", "99",
        "--max-trials", "8",
        "-f", str(csv_path),
        *key_header(api_key),
    ]  # fmt: skip
    # Two shared cores are noisy: accept 25% spread between windows, and where even
    # that is not reached, 50% (said on the console; the row records which).
    for stability in (25, 50):
        run = [*command, "--stability-percentage", str(stability)]
        print("$", shown(run, api_key), flush=True)
        done = subprocess.run(run, env=perf_analyzer_env(), stdout=subprocess.DEVNULL)
        if done.returncode == 0:
            break
        print(f"perf_analyzer found no stable window at {stability}% spread", flush=True)
    else:
        raise RuntimeError(f"perf_analyzer failed on {model} at concurrency {concurrency}")
    with open(csv_path) as f:
        return [
            {
                "concurrency": int(row["Concurrency"]),
                "throughput_img_s": float(row["Inferences/Second"]),
                "p50_ms": float(row["p50 latency"]) / 1000,
                "p99_ms": float(row["p99 latency"]) / 1000,
                "stability_percent": stability,
            }
            for row in csv.DictReader(f)
        ]


def compute_per_image_ms(client, model: str) -> tuple[float, int]:
    """(compute time per inference in ms, inferences) from Triton's statistics."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    infer = stats["inference_stats"]["compute_infer"]
    count = int(stats.get("inference_count", 0))
    return (int(infer.get("ns", 0)) / max(count, 1) / 1e6, count)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (/proc/<pid>/stat)."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU seconds of this process's ended children: the load generators it ran."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_snapshot(server_pid: int) -> dict[str, float]:
    """CPU seconds so far: tritonserver, each Python stub by model, the load generators."""
    stubs = {f"{model} stub": cpu_seconds(pid) for pid, model in python_stubs(server_pid).items()}
    return {
        "load generator": children_cpu_seconds(),
        "tritonserver": cpu_seconds(server_pid),
        **stubs,
    }


def cpu_ms_per_image(before: dict, after: dict, images: int) -> dict[str, float]:
    """Core-milliseconds per image of each process between two snapshots."""
    return {k: round((after[k] - before[k]) * 1000 / max(images, 1), 2) for k in after}


def with_cpu_account(server_pid: int, client, model: str, run):
    """run() between two CPU snapshots: (its result, core-ms an image of each process, with
    the images `model` counted in Triton's statistics, the share of all cores busy)."""
    before, started = cpu_snapshot(server_pid), time.perf_counter()
    images = compute_per_image_ms(client, model)[1]
    result = run()
    images = compute_per_image_ms(client, model)[1] - images
    wall = time.perf_counter() - started
    after = cpu_snapshot(server_pid)
    busy = sum(after[k] - before[k] for k in after) / (wall * os.cpu_count())
    return result, cpu_ms_per_image(before, after, images), round(busy, 3)
