"""NVIDIA's stock client (tritonclient) against the ensemble, without this project's
library: what any Triton user writes. The ensemble takes the encoded image bytes as a
BYTES tensor of shape [batch, 1] named IMAGE and answers SCORES; Triton's
classification extension (class_count) returns "score:index:label" strings.

    python clients/tritonclient_stock.py --url localhost:8001 cat.jpg dog.png
"""

import argparse
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("images", nargs="+", type=Path)
parser.add_argument("--url", default="localhost:8001")
parser.add_argument("--model", default="resnet_ensemble")
args = parser.parse_args()

client = grpcclient.InferenceServerClient(args.url)
batch = np.array([[path.read_bytes()] for path in args.images], dtype=np.object_)
image = grpcclient.InferInput("IMAGE", list(batch.shape), "BYTES")
image.set_data_from_numpy(batch)
scores = grpcclient.InferRequestedOutput("SCORES", class_count=1)
answer = client.infer(args.model, [image], outputs=[scores])
for path, (top1,) in zip(args.images, answer.as_numpy("SCORES"), strict=True):
    score, _, label = top1.decode().split(":", 2)
    print(f"{path}: {label} ({float(score):.4f})")
client.close()
