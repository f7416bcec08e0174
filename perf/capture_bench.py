"""`make bench-capture`: what capturing live traffic (serving/capture.py) costs the server.

For each layout (ensemble, fused), renders a copy of the published repository with it
(the ensemble with serving.capture where capture is on, as a capturing deployment would
render it), and runs perf_analyzer against the ensemble with the package's real photos at client
concurrency 1 and 4, with capture off, on at its default share (every "unknown" answer
and 1% of the rest) and on at share 1 (every answer written: the worst case, a slow disk's
load); the same server settings otherwise, one server per row, in one run. Prints a table
with each row's throughput as a ratio of capture off, how many captures were written and
the folder's size against its cap, and saves artifacts/bench/capture.json.
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
from resnet_triton.serving import capture
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.repository import VERSION, env_path_for, model_home, render
from resnet_triton.serving.server import Ports, TritonServer

SETTINGS = {"off": None, "on, share 0.01": 0.01, "on, share 1": 1.0}


def measure(onnx_path, spec, layout, share, args, input_data) -> dict:
    serving = ServingConfig(layout=layout, capture=layout == "ensemble" and share is not None)
    with tempfile.TemporaryDirectory() as tmp:
        repo, folder = Path(tmp) / "repo", Path(tmp) / "captures"
        render(spec, repo, env_path_for(repo), serving=serving)
        shutil.copy(onnx_path, repo / model_home(spec, serving) / VERSION / onnx_path.name)
        environment = {} if share is None else capture.environment(folder, share, args.cap_mb)
        with TritonServer(repo, Ports.free(), log_path=Path(tmp) / "log",
                          extra_environment=environment) as server:  # fmt: skip
            server.wait_ready([spec.names.ensemble])
            rows = [
                row
                for level in args.levels
                for row in run_perf_analyzer(
                    spec.names.ensemble, server.ports, input_data, f"{level}:{level}",
                    Path(tmp) / f"c{level}.csv", args.interval_ms,
                )
            ]  # fmt: skip
        # Stopped: every writer has written what it had queued.
        kept = capture.captured(folder) if share is not None else []
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if kept else 0
    return {"rows": rows, "captures": len(kept), "folder_bytes": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--cap-mb", type=float, default=1.0, help="small: eviction is measured")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()
    onnx_path, spec = published_model(args.repository)
    args.out.mkdir(parents=True, exist_ok=True)
    input_data = ensemble_input(package_photos(), spec.names.image, args.out / "capture_input.json")
    results = []
    for layout in ("ensemble", "fused"):
        off = None
        for name, share in SETTINGS.items():
            found = measure(onnx_path, spec, layout, share, args, input_data)
            off = off or found["rows"]
            results.append({"layout": layout, "capture": name, **found})
            cells = "  ".join(
                f"c{r['concurrency']} {r['throughput_img_s']:5.1f} img/s "
                f"({r['throughput_img_s'] / base['throughput_img_s']:.2f}x) "
                f"p99 {r['p99_ms']:6.1f} ms"
                for r, base in zip(found["rows"], off, strict=True)
            )
            kept = f"{found['captures']} kept, {found['folder_bytes'] / 2**20:.2f} MiB"
            print(f"{layout:<9} {name:<15} {cells}  [{kept}, cap {args.cap_mb} MiB]", flush=True)
    out = args.out / "capture.json"
    out.write_text(json.dumps({"model": spec.arch, "cap_mb": args.cap_mb, "results": results},
                              indent=2))  # fmt: skip
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
