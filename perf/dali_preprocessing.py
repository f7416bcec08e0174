"""`make bench-dali`: the cost per image of the DALI preprocessing option on this machine's
CPU, against the project's Python path, on the same real photos.

  python     pixels_from_bytes (Pillow's pixels; libjpeg-turbo and libspng where they
             give the same), in 1 and 2 processes, as Triton's Python preprocess model
             runs it (ceilings.preprocessing_ms)
  dali       the serialized CPU-target pipeline (the file `render` writes for
             serving.preprocess_backend: dali) run by DALI's executor with 1 and 2 threads,
             at batch 1 (the DALI model runs each request alone) and batch 32 (a client
             sending 32 images in one request)

The GPU target's nvJPEG decoder is not measured here (no GPU). Prints a table and
saves artifacts/bench/dali-preprocessing.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ceilings import preprocessing_ms

from resnet_triton.data import package_photos
from resnet_triton.digits import demo_spec
from resnet_triton.serving import dali


def dali_ms(model: bytes, image_name: str, photos: list[bytes], threads: int, batch: int,
            seconds: float) -> float:  # fmt: skip
    """Wall ms per image of the DALI pipeline, batches cut from the photos in turn."""
    run = dali.CpuPipeline(model, image_name, threads=threads)
    batches = [[photos[(i + j) % len(photos)] for j in range(batch)] for i in range(len(photos))]
    run(batches[0])  # warm-up: buffers sized once
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for images in batches:
            run(images)
            done += len(images)
    return (time.perf_counter() - start) * 1000 / done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/dali-preprocessing.json"))
    args = parser.parse_args()
    spec = demo_spec()  # 256/224 bilinear, as every architecture's default
    photos = [path.read_bytes() for path in package_photos()]
    model = dali.serialized(spec, "cpu", threads=2)
    rows = []
    for workers in (1, 2):
        ms = preprocessing_ms(photos, spec.preprocessing, workers, args.seconds)
        rows.append(
            {
                "path": "python",
                "parallel": f"{workers} process" + "es" * (workers > 1),
                "batch": 1,
                "ms": ms,
            }
        )
    for threads in (1, 2):
        for batch in (1, 32):
            ms = dali_ms(model, spec.names.image, photos, threads, batch, args.seconds)
            rows.append(
                {
                    "path": "dali (CPU)",
                    "parallel": f"{threads} thread" + "s" * (threads > 1),
                    "batch": batch,
                    "ms": ms,
                }
            )
    print(f"{len(photos)} photos, {args.seconds:.0f} s per line; wall ms per image")
    print(f"{'path':<12}{'parallel':<14}{'batch':>6}{'ms/image':>10}{'images/s':>10}")
    for row in rows:
        print(
            f"{row['path']:<12}{row['parallel']:<14}{row['batch']:>6}"
            f"{row['ms']:>10.2f}{1000 / row['ms']:>10.1f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"photos": len(photos), "rows": rows}, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
