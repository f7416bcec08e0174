"""`make bench-sweep`: perf_analyzer over concurrency and client batch, per model and protocol.

For the ensemble (encoded photos), the preprocess model alone (the same
photos) and the classifier alone (the photos preprocessed), over gRPC and
HTTP, at client batch 1 and 4 and concurrency 1, 2, 4, 8. Each cell is
perf_analyzer's own CSV export in <out>/sweep/; <out>/sweep.json collects
them and <out>/sweep.png plots throughput against p99 latency.
About 15 minutes on 2 cores.

--served HOST measures a server already running there (its published ports, 8000 and
8001: the CPU container or the replicas' balancer, through their proxy) instead of
starting one; --repository still gives the model's names and inputs. --api-key (default
$RESNET_TRITON_API_KEY) is the proxy's inference key: perf_analyzer sends it on every
request, and the printed command lines show <api key> in its place. Mind the proxy's
rate limit (RESNET_TRITON_RATE_LIMIT): a measurement above it measures the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from matplotlib.figure import Figure
from perf_tools import classifier_input, ensemble_input, published_model, run_perf_analyzer

from resnet_triton.client import API_KEY_ENV, Classifier, ClientError
from resnet_triton.data import package_photos
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.serving.server import Ports, TritonServer


@contextlib.contextmanager
def target(args: argparse.Namespace, ensemble: str, log: Path):
    """(host, ports) of the server to measure: --served, checked with the key, or one of
    our own on --repository."""
    if args.served:
        ports = Ports()
        # A refused key or an unknown model is said now, in one line, not as 24 failed runs.
        try:
            Classifier(
                f"{args.served}:{ports.grpc}", "grpc", ensemble, api_key=args.api_key
            ).close()
        except ClientError as exc:
            raise SystemExit(f"sweep: {exc}") from None
        yield args.served, ports
        return
    with TritonServer(args.repository, Ports.free(), log_path=log) as server:
        server.wait_ready([ensemble])
        yield "localhost", server.ports


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--concurrency", default="1:8:1", help="perf_analyzer start:end:step")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--protocols", nargs="+", default=["grpc", "http"])
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    parser.add_argument("--served", metavar="HOST", help="a running server (see above)")
    parser.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV),
        help=f"the proxy's inference key (default: ${API_KEY_ENV})",
    )  # fmt: skip
    args = parser.parse_args()

    onnx_path, spec = published_model(args.repository)
    photos = package_photos()
    folder = args.out / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    encoded = ensemble_input(photos, spec.names.image, folder / "encoded.json")
    pixels = pixels_from_files(photos, spec.preprocessing)
    tensors = classifier_input(pixels, spec.names.pixels, folder / "tensors.json")
    models = {
        spec.names.ensemble: encoded,
        spec.names.preprocess: encoded,
        spec.names.classifier: tensors,
    }
    cells = []
    with target(args, spec.names.ensemble, folder / "triton.log") as (host, ports):
        for model, data in models.items():
            for protocol in args.protocols:
                for batch in args.batches:
                    name = f"{model}_{protocol}_b{batch}"
                    rows = run_perf_analyzer(
                        model, ports, data, args.concurrency, folder / f"{name}.csv",
                        args.interval_ms, protocol=protocol, batch=batch, host=host,
                        api_key=args.api_key,
                    )  # fmt: skip
                    cells.append({"model": model, "protocol": protocol, "batch": batch,
                                  "rows": rows})  # fmt: skip
                    top = max(rows, key=lambda r: r["throughput_img_s"])
                    print(
                        f"{name}: best {top['throughput_img_s']:.1f} img/s at concurrency "
                        f"{top['concurrency']} (p99 {top['p99_ms']:.0f} ms)",
                        flush=True,
                    )
    (args.out / "sweep.json").write_text(json.dumps(cells, indent=2))
    plot(cells, list(models), args.out / "sweep.png")
    print(f"written: {args.out}/sweep.json, sweep.png, {folder}/*.csv")
    return 0


def plot(cells: list[dict], models: list[str], path: Path) -> None:
    """Throughput against p99 latency, one panel per model, one line per protocol and batch."""
    fig = Figure(figsize=(13, 4.5))
    axes = fig.subplots(1, len(models), sharey=True)
    for ax, model in zip(axes, models, strict=True):
        for cell in (c for c in cells if c["model"] == model):
            rows = cell["rows"]
            ax.plot([r["p99_ms"] for r in rows], [r["throughput_img_s"] for r in rows],
                    marker="o", label=f"{cell['protocol']}, batch {cell['batch']}")  # fmt: skip
        ax.set(title=model, xlabel="p99 latency (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("throughput (images/s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
