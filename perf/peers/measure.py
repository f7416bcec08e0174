"""One load generator for every server (wrk over HTTP, the same photos), and what a run
costs the server: CPU time of all its processes per image and their memory.

Triton is asked at /v2/models/<ensemble>/infer with the binary-data extension (a JSON
header, then the serialized BYTES element) for top-k classification strings; the peers
at their own path with the encoded image as the body. Both get the same 10 photos in
turn.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from runner import Server, cpu_seconds, pss_mib

from resnet_triton.serving.probe import serialized_bytes

LOAD_SCRIPT = Path(__file__).resolve().parent / "load.lua"
TOP_K = 3


@dataclass(frozen=True)
class Target:
    """Where the load goes: a URL path and the request bodies (a list file for load.lua)."""

    port: int
    path: str
    bodies: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


def peer_bodies(photos: list[Path], folder: Path) -> Path:
    """The photos as they are: the peers take the encoded image as the body."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "bodies.txt"
    listing.write_text("".join(f"{p}\t\n" for p in photos))
    return listing


def triton_body(data: bytes, image: str, scores: str) -> tuple[bytes, int]:
    """(the request body, its JSON header's length): Triton's binary-data extension with
    one BYTES element and the top-k classification of the scores as JSON strings."""
    element = serialized_bytes(data)
    header = json.dumps(
        {
            "inputs": [
                {"name": image, "shape": [1, 1], "datatype": "BYTES",
                 "parameters": {"binary_data_size": len(element)}},
            ],
            "outputs": [{"name": scores, "parameters": {"classification": TOP_K}}],
        }
    ).encode()  # fmt: skip
    return header + element, len(header)


def triton_bodies(photos: list[Path], folder: Path, image: str, scores: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, photo in enumerate(photos):
        body, header = triton_body(photo.read_bytes(), image, scores)
        (folder / f"{n}.bin").write_bytes(body)
        lines.append(f"{folder / f'{n}.bin'}\t{header}\n")
    listing = folder / "bodies.txt"
    listing.write_text("".join(lines))
    return listing


def wrk(target: Target, concurrency: int, seconds: float, max_requests: int) -> dict:
    """One wrk run: requests, errors, seconds, p50/p99 latency in microseconds."""
    result = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
         "-s", str(LOAD_SCRIPT), f"http://127.0.0.1:{target.port}"],
        env={**os.environ, "WRK_BODIES": str(target.bodies), "WRK_PATH": target.path,
             "WRK_MAX": str(max_requests)},
        capture_output=True, text=True,
    )  # fmt: skip
    lines = [x for x in result.stdout.splitlines() if x.startswith("JSON ")]
    if result.returncode or not lines:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stdout}{result.stderr}")
    return json.loads(lines[0][5:])


def load_cpu() -> float:
    """CPU seconds of this process's ended children: the wrk runs."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class PeakMemory:
    """The largest PSS of a server's processes, sampled every 0.5 s while in the block."""

    def __init__(self, server: Server):
        self.server, self.peak, self._stop = server, 0.0, threading.Event()

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, pss_mib(self.server.pids))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_level(server: Server, target: Target, concurrency: int, seconds: float) -> dict:
    """One concurrency: a short warm-up, then the measured run with its CPU account."""
    wrk(target, concurrency, 2, 0)
    cap = int(seconds * 2000)  # far above what 2 cores answer: time bounds the run
    server_before, load_before = cpu_seconds(server.pids), load_cpu()
    with PeakMemory(server) as memory:
        stats = wrk(target, concurrency, seconds, cap)
    answered = max(stats["requests"] - stats["errors"], 1)
    return {
        "concurrency": concurrency,
        "throughput_img_s": round((stats["requests"] - stats["errors"]) / stats["seconds"], 1),
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "requests": stats["requests"],
        "errors": stats["errors"],
        "cpu_ms_per_image": {
            "server": round((cpu_seconds(server.pids) - server_before) * 1000 / answered, 2),
            "load generator": round((load_cpu() - load_before) * 1000 / answered, 2),
        },
        "pss_mib_under_load": round(memory.peak, 1),
    }


def idle_memory(server: Server, settle: float = 2.0) -> float:
    time.sleep(settle)
    return round(pss_mib(server.pids), 1)
