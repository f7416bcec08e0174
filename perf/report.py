"""`make bench`: the served ensemble against its ceiling and a typical baseline, in one run.

The same real photos (JPEG and PNG from scikit-image and scikit-learn), the
same client concurrency levels, each system measured alone on the machine:

  ensemble    Triton: encoded photos in, labels out (NVIDIA's perf_analyzer, gRPC)
  classifier  Triton: the classifier alone, fed the photos already preprocessed
  baseline    FastAPI + PIL preprocessing + ONNX Runtime per request, one uvicorn
              worker (perf/baseline_app.py), driven by wrk with the same photos
  ceiling     ONNX Runtime in-process on the preprocessed photos at batch 32

Writes <out>/report.md, report.json and throughput_vs_p99.png, and prints the
report. Targets, reported and never asserted: ensemble >= 0.9x the ceiling;
ensemble throughput >= the baseline's with a lower p99 at concurrency >= 4;
ensemble >= 0.9x the classifier alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import tritonclient.grpc as grpcclient
from matplotlib.figure import Figure
from perf_tools import (
    classifier_input,
    compute_per_image_ms,
    ensemble_input,
    onnxruntime_ceiling,
    published_model,
    run_perf_analyzer,
)

from resnet_triton.data import package_photos
from resnet_triton.preprocess import pixels_from_files
from resnet_triton.serving.server import Ports, TritonServer

PERF = Path(__file__).parent


def measure_triton(repo, spec, photos, pixels, levels, interval_ms, out) -> dict:
    inputs = {
        "ensemble": (spec.names.ensemble, ensemble_input(photos, spec.names.image, out / "e.json")),
        "classifier": (
            spec.names.classifier,
            classifier_input(pixels, spec.names.pixels, out / "c.json"),
        ),
    }
    results = {kind: [] for kind in inputs}
    with TritonServer(repo, Ports.free(), log_path=out / "triton.log") as server:
        server.wait_ready([spec.names.ensemble])
        client = grpcclient.InferenceServerClient(f"localhost:{server.ports.grpc}")
        for kind, (model, data) in inputs.items():
            for level in levels:
                results[kind] += run_perf_analyzer(
                    model, server.ports, data, f"{level}:{level}", out / f"{kind}_{level}.csv",
                    interval_ms,
                )  # fmt: skip
            if kind == "ensemble":
                results["preprocess_ms_per_image"] = compute_per_image_ms(
                    client, spec.names.preprocess
                )[0]
        client.close()
    return results


def measure_baseline(onnx_path, photos, levels, seconds, out) -> list[dict]:
    port = Ports.free().http
    (out / "wrk_images.txt").write_text("".join(f"{p}\n" for p in photos))
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(PERF), "baseline_app:app",
         "--port", str(port), "--workers", "1", "--log-level", "warning"],
        env={**os.environ, "ONNX_MODEL": str(onnx_path)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or app.poll() is not None:
                    raise RuntimeError("the baseline app did not start") from None
                time.sleep(0.5)
        rows = []
        for level in levels:
            result = subprocess.run(
                ["wrk", "-t1", f"-c{level}", f"-d{seconds}s", "--timeout", "30s",
                 "-s", str(PERF / "wrk_images.lua"), f"http://127.0.0.1:{port}"],
                env={**os.environ, "WRK_IMAGES": str(out / "wrk_images.txt")},
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            line = next(x for x in result.stdout.splitlines() if x.startswith("JSON "))
            stats = json.loads(line[5:])
            if stats["errors"]:
                raise RuntimeError(f"baseline answered {stats['errors']} errors:\n{result.stdout}")
            rows.append(
                {
                    "concurrency": level,
                    "throughput_img_s": round(stats["requests"] / stats["seconds"], 1),
                    "p50_ms": stats["p50_us"] / 1000,
                    "p99_ms": stats["p99_us"] / 1000,
                }
            )
        return rows
    finally:
        app.terminate()
        app.wait(30)


def best(rows: list[dict]) -> float:
    return max(r["throughput_img_s"] for r in rows)


def plot(report: dict, path: Path) -> None:
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for kind, marker in (("ensemble", "o"), ("classifier", "s"), ("baseline", "^")):
        rows = report[kind]
        ax.plot([r["p99_ms"] for r in rows], [r["throughput_img_s"] for r in rows],
                marker=marker, label=kind)  # fmt: skip
        for r in rows:
            ax.annotate(f"c{r['concurrency']}", (r["p99_ms"], r["throughput_img_s"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)  # fmt: skip
    ceiling = report["ceiling"]["throughput_img_s"]
    ax.axhline(ceiling, color="gray", linestyle="--", label=f"ONNX Runtime ceiling ({ceiling})")
    ax.set(xlabel="p99 latency (ms)", ylabel="throughput (images/s)",
           title=f"{report['model']} on {report['cpu_count']} CPUs, real photos")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(report: dict) -> str:
    lines = [
        f"# Serving benchmark: {report['model']}, {report['cpu_count']} CPUs",
        "",
        f"{len(report['photos'])} real photos ({', '.join(report['photos'])}); each system "
        "measured alone; Triton with perf_analyzer over gRPC, the baseline with wrk.",
        "",
        "| system | concurrency | images/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for kind in ("ensemble", "classifier", "baseline"):
        for r in report[kind]:
            lines.append(f"| {kind} | {r['concurrency']} | {r['throughput_img_s']:.1f} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")  # fmt: skip
    c = report["ceiling"]
    lines += [
        f"| ceiling (ONNX Runtime in-process, batch {c['batch']}) | - | "
        f"{c['throughput_img_s']:.1f} | {c['p50_ms']:.1f} per batch | "
        f"{c['p99_ms']:.1f} per batch |",
        "",
        "| ratio | value | target |",
        "|---|---|---|",
        f"| ensemble / ceiling (best) | {report['ratios']['ensemble_over_ceiling']:.2f} | >= 0.9 |",
        f"| ensemble / classifier alone (best) | "
        f"{report['ratios']['ensemble_over_classifier']:.2f} | >= 0.9 |",
    ]
    for level, ratio in report["ratios"]["ensemble_over_baseline"].items():
        p99 = report["ratios"]["p99_ensemble_vs_baseline_ms"][level]
        lines.append(f"| ensemble / baseline at concurrency {level} | {ratio:.2f} "
                     f"(p99 {p99[0]:.0f} vs {p99[1]:.0f} ms) | >= 1, lower p99 |")  # fmt: skip
    lines += [
        "",
        f"Preprocess model compute under load: {report['preprocess_ms_per_image']:.1f} ms "
        "per image (Triton statistics).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--interval-ms", type=int, default=4000)
    parser.add_argument("--seconds", type=int, default=10, help="wrk run per level")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()

    onnx_path, spec = published_model(args.repository)
    photos = package_photos()
    pixels = pixels_from_files(photos, spec.preprocessing)  # (n, 3, crop, crop)
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    ceiling = onnxruntime_ceiling(onnx_path, pixels, spec.max_batch_size, 10)
    triton = measure_triton(
        args.repository, spec, photos, pixels, args.levels, args.interval_ms, args.out
    )
    baseline = measure_baseline(onnx_path, photos, args.levels, args.seconds, args.out)
    ensemble = triton["ensemble"]
    report = {
        "model": spec.arch,
        "cpu_count": os.cpu_count(),
        "photos": [p.name for p in photos],
        "ensemble": ensemble,
        "classifier": triton["classifier"],
        "baseline": baseline,
        "ceiling": ceiling,
        "preprocess_ms_per_image": round(triton["preprocess_ms_per_image"], 2),
        "ratios": {
            "ensemble_over_ceiling": round(best(ensemble) / ceiling["throughput_img_s"], 3),
            "ensemble_over_classifier": round(best(ensemble) / best(triton["classifier"]), 3),
            "ensemble_over_baseline": {
                e["concurrency"]: round(e["throughput_img_s"] / b["throughput_img_s"], 3)
                for e, b in zip(ensemble, baseline, strict=True)
            },
            "p99_ensemble_vs_baseline_ms": {
                e["concurrency"]: (e["p99_ms"], b["p99_ms"])
                for e, b in zip(ensemble, baseline, strict=True)
            },
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    (args.out / "report.md").write_text(markdown(report))
    plot(report, args.out / "throughput_vs_p99.png")
    print(markdown(report))
    print(f"written: {args.out}/report.md, report.json, throughput_vs_p99.png "
          f"({report['seconds']:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
