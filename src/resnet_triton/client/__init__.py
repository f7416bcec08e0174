"""Classify images through the Triton ensemble: one API over gRPC and HTTP, sync and asyncio.

    with Classifier("localhost:8001", "grpc") as classifier:
        results = classifier.classify(["cat.jpg", pil_image, png_bytes], top_k=3)
    for r in results:
        print(r.source, r.top1.label if r.ok else r.error)

- Images are bytes, paths, PIL images or uint8 arrays (H, W[, 3]); PIL images
  and arrays are sent as PNG, the rest as they are.
- The model's metadata and config are read once; long lists are split into
  requests of at most the model's max_batch_size, `concurrency` in flight (the
  client's threads, shared by every call; a call of one request sends it from
  the calling thread). Each Result names the model version that answered.
- One policy for a failed request, sync and async alike (protocol.Failure,
  carried by ClientError.failure):
  * unavailable (gRPC UNAVAILABLE, HTTP 502/503, a connection refused, reset
    or closed before the answer): sent again with exponential backoff, up to
    `retries` times; then every image of the request has the error;
  * invalid input (gRPC INVALID_ARGUMENT, HTTP 400: the server refused an
    image): a request of several images is sent again one image at a time, so
    only the bad image fails, with an error naming it;
  * a timeout (gRPC DEADLINE_EXCEEDED, HTTP 504, a socket or aiohttp timeout),
    an unknown model, anything else: every image of the request has the error
    at once, not retried and not split.
- Labels come from the server (the ensemble's label file through Triton's
  classification extension): the client holds no copy of them.
- `shared_memory=True` (sync gRPC/HTTP) passes inputs through system shared
  memory when client and server share a host, for either image input (BYTES
  or the DALI model's UINT8): a region per request in flight, registered once
  and reused, released by close(). Registering a region is a restricted API,
  so it needs the server's admin key.

classifier  Classifier, the synchronous client (threads; shared memory)
aio         AsyncClassifier, the asyncio client
protocol    what both share: results, encoding, the batching policy, the retry policy
shm         ShmPool, the shared-memory regions of a Classifier
classify    `resnet-triton classify`

Nothing here imports PyTorch or the server side (tests/test_package.py).
"""

from resnet_triton.client.aio import AsyncClassifier
from resnet_triton.client.classifier import Classifier
from resnet_triton.client.protocol import (
    PROTOCOLS,
    ClientError,
    ModelInfo,
    Prediction,
    Result,
    encode_image,
    parse_classification,
)

__all__ = [
    "PROTOCOLS", "AsyncClassifier", "Classifier", "ClientError", "ModelInfo", "Prediction",
    "Result", "encode_image", "parse_classification",
]  # fmt: skip
