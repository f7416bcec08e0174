"""Classify every image under a folder: requests of up to the model's max batch size,
several in flight, a count as they finish, a summary per label at the end.

    python clients/many_files.py --url localhost:8001 --concurrency 8 shots/
"""

import argparse
from collections import Counter
from pathlib import Path

from resnet_triton.client import PROTOCOLS, Classifier
from resnet_triton.spec import IMAGE_EXTENSIONS

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("folder", type=Path)
parser.add_argument("--url", default=PROTOCOLS["grpc"])
parser.add_argument("--concurrency", type=int, default=8)
args = parser.parse_args()

paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
done = 0


def progress(count: int) -> None:
    global done
    done += count


with Classifier(args.url, "grpc", concurrency=args.concurrency) as classifier:
    print(f"{len(paths)} images, requests of up to {classifier.info.max_batch_size}")
    results = classifier.classify(paths, progress=progress)
labels = Counter(r.top1.label for r in results if r.ok)
failed = [r for r in results if not r.ok]
print(f"classified {done} images: " + ", ".join(f"{k}: {v}" for k, v in sorted(labels.items())))
for result in failed:
    print(f"{result.source}: error: {result.error}")
