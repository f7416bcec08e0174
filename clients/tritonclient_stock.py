"""NVIDIA's stock client (tritonclient) against the ensemble, without this project's
client library: what any Triton user writes. The ensemble takes the encoded image bytes
as a BYTES tensor of shape [batch, 1] (IMAGE) and answers SCORES; Triton's
classification extension (class_count) returns "score:index:label" strings. The names
come from the model spec's defaults. Where the server's proxy asks for an inference key
(SECURITY.md), it goes as gRPC metadata `authorization: Bearer <key>`, here from
$RESNET_TRITON_API_KEY.

    python clients/tritonclient_stock.py --url localhost:8001 cat.jpg dog.png
"""

import argparse
import os
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from resnet_triton.endpoints import GRPC_PORT
from resnet_triton.spec import Names

NAMES = Names()

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("images", nargs="+", type=Path)
parser.add_argument("--url", default=f"localhost:{GRPC_PORT}")
parser.add_argument("--model", default=NAMES.ensemble)
args = parser.parse_args()

client = grpcclient.InferenceServerClient(args.url)
batch = np.array([[path.read_bytes()] for path in args.images], dtype=np.object_)
image = grpcclient.InferInput(NAMES.image, list(batch.shape), "BYTES")
image.set_data_from_numpy(batch)
scores = grpcclient.InferRequestedOutput(NAMES.scores, class_count=1)
key = os.environ.get("RESNET_TRITON_API_KEY")
headers = {"authorization": f"Bearer {key}"} if key else None
answer = client.infer(args.model, [image], outputs=[scores], headers=headers)
for path, (top1,) in zip(args.images, answer.as_numpy(NAMES.scores), strict=True):
    score, _, label = top1.decode().split(":", 2)
    print(f"{path}: {label} ({float(score):.4f})")
client.close()
