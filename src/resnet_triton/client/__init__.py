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
- One policy for a failed request, sync and async alike (failures.Failure,
  carried by ClientError.failure):
  * unavailable (gRPC UNAVAILABLE, HTTP 502/503, a connection refused, reset
    or closed before the answer): sent again with exponential backoff, up to
    `retries` times; then every image of the request has the error;
  * throttled (the proxy's rate limit: HTTP 429, gRPC RESOURCE_EXHAUSTED): sent
    again within the same `retries`, after the longer of the backoff and the wait the
    proxy names ("retry after 2 s"); then every image of the request has the error;
  * invalid input (gRPC INVALID_ARGUMENT, HTTP 400: the server refused an
    image): a request of several images is sent again one image at a time, so
    only the bad image fails, with an error naming it;
  * a timeout (gRPC DEADLINE_EXCEEDED, HTTP 504, a socket or aiohttp timeout),
    an unknown model, a missing or refused API key, anything else: every image of
    the request has the error at once, not retried and not split.
- `api_key` (default $RESNET_TRITON_API_KEY): the inference key that the proxy in
  front of Triton (docker/nginx) asks for when keys are on, sent as
  `authorization: Bearer <key>` on every request (gRPC: metadata). A missing or
  refused key is said as such, with how to pass one; no error repeats the key.
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
failures    what a failed request's error means (Failure), API_KEY_ENV
shm         ShmPool, the shared-memory regions of a Classifier
classify    `resnet-triton classify`

Nothing here imports PyTorch or the server side (tests/test_package.py).
"""

from resnet_triton.client.aio import AsyncClassifier
from resnet_triton.client.classifier import Classifier
from resnet_triton.client.failures import API_KEY_ENV
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
    "API_KEY_ENV", "PROTOCOLS", "AsyncClassifier", "Classifier", "ClientError", "ModelInfo",
    "Prediction", "Result", "encode_image", "parse_classification",
]  # fmt: skip
