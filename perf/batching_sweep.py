"""`make bench-batching`: the serving settings behind ServingConfig's defaults.

For each candidate (dynamic-batcher queue delays per model, preferred batch
sizes, ONNX Runtime threads, instance counts), renders a copy of the published
repository with those settings, starts the local server, and runs
perf_analyzer against the ensemble with real photos at client concurrency 1,
2, 4 and 8: a setting that helps a saturated server can cost a single client
(every model waits its queue delay for a batch that never comes). Prints a
table and writes <out>/batching_sweep.json; perf/README.md records the run
that chose the defaults in resnet_triton/serving/config.py.
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

# Candidates spell out every field a default was chosen for, so that they measure
# the same thing after the defaults move (perf/README.md has the figures).
PREFERRED = {"preferred_batch_sizes": (8, 16, 32), "classifier_nice": 0}
NO_DELAYS = {"preprocess_queue_delay_us": 0, "classifier_queue_delay_us": 0}
NONE = {"preferred_batch_sizes": (), **NO_DELAYS, "classifier_nice": 0}  # none of them
NICE = {**NONE, "classifier_nice": 10}
CANDIDATES = {
    "2 ms delays (before)": {
        **PREFERRED, "preprocess_queue_delay_us": 2000, "classifier_queue_delay_us": 2000,
    },
    "no delays": {**PREFERRED, **NO_DELAYS},
    "classifier 2 ms only": {**PREFERRED, **NO_DELAYS, "classifier_queue_delay_us": 2000},
    "no delays, no preferred sizes": NONE,
    "no delays, 2 preprocess instances": {**PREFERRED, **NO_DELAYS, "preprocess_instances": 2},
    "no delays, ONNX Runtime 1 thread": {**PREFERRED, **NO_DELAYS, "intra_op_threads": 1},
    "none of them, 2 preprocess instances": {**NONE, "preprocess_instances": 2},
    "none of them, 2 preprocess instances, ONNX Runtime 1 thread": {
        **NONE, "preprocess_instances": 2, "intra_op_threads": 1,
    },
    "none of them, idle ONNX Runtime threads spin": {**NONE, "allow_spinning": True},
    "none of them, classifier at nice 10": NICE,
    "none of them, classifier at nice 19": {**NONE, "classifier_nice": 19},
    "none of them, classifier at nice 10, 2 preprocess instances": {
        **NICE, "preprocess_instances": 2,
    },
    "none of them, classifier at nice 10, 2 classifier instances of 1 thread": {
        **NICE, "classifier_instances": 2, "intra_op_threads": 1,
    },
    "none of them, classifier at nice 10, idle ONNX Runtime threads spin": {
        **NICE, "allow_spinning": True,
    },
}  # fmt: skip


def measure(onnx_path, spec, serving, input_data, levels, interval_ms) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        render(spec, repo, env_path_for(repo), serving=serving)
        shutil.copy(onnx_path, repo / spec.names.classifier / "1" / ONNX_FILE)
        with TritonServer(repo, Ports.free(), log_path=Path(tmp) / "log") as server:
            server.wait_ready([spec.names.ensemble])
            return [
                row
                for level in levels
                for row in run_perf_analyzer(
                    spec.names.ensemble, server.ports, input_data, f"{level}:{level}",
                    Path(tmp) / f"c{level}.csv", interval_ms,
                )
            ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="candidates to run")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    onnx_path, spec = published_model(args.repository)
    args.out.mkdir(parents=True, exist_ok=True)
    input_data = ensemble_input(package_photos(), spec.names.image, args.out / "sweep_input.json")
    results = []
    for name in args.only or CANDIDATES:
        serving = ServingConfig(**CANDIDATES[name])
        rows = measure(onnx_path, spec, serving, input_data, args.levels, args.interval_ms)
        results.append({"candidate": name, "serving": serving.to_dict(), "rows": rows})
        cells = "  ".join(
            f"c{r['concurrency']} {r['throughput_img_s']:5.1f} img/s p50 {r['p50_ms']:5.1f} "
            f"p99 {r['p99_ms']:5.1f}"
            for r in rows
        )
        print(f"{name:<36} {cells}", flush=True)
    out = args.out / "batching_sweep.json"
    out.write_text(json.dumps({"model": spec.arch, "results": results}, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
