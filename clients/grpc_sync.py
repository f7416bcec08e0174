"""Classify image files over gRPC with the synchronous client.

python clients/grpc_sync.py --url localhost:8001 cat.jpg dog.png
"""

import argparse

from resnet_triton.client import PROTOCOLS, Classifier

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("images", nargs="+")
parser.add_argument("--url", default=PROTOCOLS["grpc"])
args = parser.parse_args()

with Classifier(args.url, "grpc") as classifier:
    for result in classifier.classify(args.images, top_k=3):
        if result.ok:
            print(f"{result.source}: {result.top1.label} ({result.top1.score:.4f})")
        else:
            print(f"{result.source}: error: {result.error}")
