"""Classify image files through system shared memory (client and server on one host).

Registering a shared-memory region is one of Triton's restricted APIs: pass the
server's admin key (`make serve` prints it; the compose services take TRITON_ADMIN_KEY).

    python clients/shared_memory.py --url localhost:8001 --admin-key KEY cat.jpg
"""

import argparse

from resnet_triton.client import PROTOCOLS, Classifier

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("images", nargs="+")
parser.add_argument("--url", default=PROTOCOLS["grpc"])
parser.add_argument("--admin-key", required=True)
args = parser.parse_args()

with Classifier(args.url, "grpc", shared_memory=True, admin_key=args.admin_key) as classifier:
    for result in classifier.classify(args.images):
        if result.ok:
            print(f"{result.source}: {result.top1.label} ({result.top1.score:.4f})")
        else:
            print(f"{result.source}: error: {result.error}")
