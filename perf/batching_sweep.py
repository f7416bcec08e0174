"""`make bench-batching`: the dynamic-batcher settings behind the serving defaults.

For each candidate (preferred batch sizes, max queue delay), renders a copy of
the published repository with those settings on both batching models, starts
the local server, and runs perf_analyzer against the ensemble with real
photos at a fixed client concurrency. Prints a table and writes
<out>/batching_sweep.json; perf/README.md records the run that chose the
defaults in resnet_triton/serving/config.py (ServingConfig).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from perf_tools import ensemble_input, published_model, run_perf_analyzer

from resnet_triton.data import package_photos
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.repository import ONNX_FILE, env_path_for, render
from resnet_triton.serving.server import Ports, TritonServer

CANDIDATES = [
    ((), 0),  # no waiting: batch whatever is queued
    ((), 5000),
    ((8, 16, 32), 2000),
    ((8, 16, 32), 10000),
    ((4, 8, 16, 32), 500),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--interval-ms", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    onnx_path, spec = published_model(args.repository)
    args.out.mkdir(parents=True, exist_ok=True)
    input_data = ensemble_input(package_photos(), spec.names.image, args.out / "sweep_input.json")
    rows = []
    for preferred, delay in CANDIDATES:
        serving = ServingConfig(preferred_batch_sizes=preferred, max_queue_delay_us=delay)
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp) / "repo"
            render(spec, repo, env_path_for(repo), serving=serving)
            shutil.copy(onnx_path, repo / spec.names.classifier / "1" / ONNX_FILE)
            with TritonServer(repo, Ports.free(), log_path=Path(tmp) / "log") as server:
                server.wait_ready([spec.names.ensemble])
                (row,) = run_perf_analyzer(
                    spec.names.ensemble, server.ports, input_data,
                    f"{args.concurrency}:{args.concurrency}",
                    Path(tmp) / "sweep.csv", args.interval_ms,
                )  # fmt: skip
        rows.append({"preferred_batch_sizes": list(preferred), "max_queue_delay_us": delay, **row})
        print(f"preferred {str(list(preferred) or 'none'):<16} delay {delay:>6} us: "
              f"{row['throughput_img_s']:6.1f} img/s, p50 {row['p50_ms']:6.1f} ms, "
              f"p99 {row['p99_ms']:6.1f} ms", flush=True)  # fmt: skip
    (args.out / "batching_sweep.json").write_text(json.dumps(rows, indent=2))
    print(f"written to {args.out / 'batching_sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
