"""Classify image files over HTTP with the asyncio client, inside your own event loop.

python clients/http_asyncio.py --url localhost:8000 cat.jpg dog.png
"""

import argparse
import asyncio

from resnet_triton.client import PROTOCOLS, AsyncClassifier


async def main(images: list[str], url: str) -> None:
    async with await AsyncClassifier.connect(url, "http", concurrency=4) as classifier:
        for result in await classifier.classify(images):
            if result.ok:
                print(f"{result.source}: {result.top1.label} ({result.top1.score:.4f})")
            else:
                print(f"{result.source}: error: {result.error}")


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("images", nargs="+")
parser.add_argument("--url", default=PROTOCOLS["http"])
args = parser.parse_args()
asyncio.run(main(args.images, args.url))
