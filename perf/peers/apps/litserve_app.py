"""LitServe: one LitAPI with dynamic batching, `workers_per_device` inference processes on
the CPU, the image decoded inside each batch by a thread pool as LitServe's own ResNet
benchmark does it (tests/parity_fastapi/ls-server.py).

    ONNX_MODEL=... ORT_THREADS=1 PEER_SETTINGS='{"workers_per_device": 2,
        "max_batch_size": 8, "batch_timeout": 0.01}' python litserve_app.py --port 8000

LitServe has no separate decode stage: `decode_request`, `batch`, `predict` and
`encode_response` all run in the inference worker, one batch after another. Decoding is
parallel to inference only across workers (one decodes while the other infers) and
across the images of a batch (the thread pool; the decoders release the GIL).

No `from __future__ import annotations` here: LitServe reads decode_request's annotation
object to build the FastAPI route, and a string would not resolve there.
"""

import argparse
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

import litserve as ls
import numpy as np
from fastapi import Body
from fastapi.responses import JSONResponse
from model import ImageDecodeError, Model

SETTINGS = json.loads(os.environ.get("PEER_SETTINGS", "{}"))

# The body itself: FastAPI hands a non-JSON body over as bytes. With LitServe's default
# (a starlette Request) the API server would parse the body as JSON or a form.
ImageBody = Annotated[bytes, Body(media_type="application/octet-stream")]


class Classify(ls.LitAPI):
    """Encoded images in, one answer each; a bad image fails only its own request."""

    def setup(self, device: str) -> None:
        self.model = Model.load()  # ORT_THREADS intra-op threads
        self.decoders = ThreadPoolExecutor(os.cpu_count())

    def decode_request(self, request: ImageBody) -> bytes:
        return request  # decoded with the rest of its batch, in batch()

    def batch(self, bodies: list[bytes]) -> list:
        """Encoded images -> (3, crop, crop) uint8 pixels, or the ImageDecodeError."""
        return list(self.decoders.map(self._pixels, bodies))

    def _pixels(self, body: bytes) -> np.ndarray | ImageDecodeError:
        try:
            return self.model.pixels(body)
        except ImageDecodeError as exc:
            # Raising would fail every request of the batch (LitServe answers the whole
            # batch with the error); carried to encode_response, it fails its own.
            return exc

    def predict(self, decoded: list) -> list:
        answers = list(decoded)
        good = [i for i, item in enumerate(decoded) if isinstance(item, np.ndarray)]
        if good:
            scores = self.model.scores(np.stack([decoded[i] for i in good]))  # (N, classes)
            for i, answer in zip(good, self.model.answers(scores), strict=True):
                answers[i] = answer
        return answers

    def encode_response(self, output):
        if isinstance(output, ImageDecodeError):
            # A Response is returned by the API server as it is: HTTP 422, this request only.
            return JSONResponse({"detail": str(output)}, status_code=422)
        return output


def _interrupt(main_pid: int):
    """LitServe stops its API servers, workers and queue manager on Ctrl+C only; the
    harness sends SIGTERM, which becomes the same KeyboardInterrupt in this process. The
    processes LitServe forks inherit the handler: there SIGTERM keeps its default."""

    def handler(signum, frame):
        if os.getpid() == main_pid:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    return handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    api = Classify(
        max_batch_size=SETTINGS.get("max_batch_size", 8),
        batch_timeout=SETTINGS.get("batch_timeout", 0.01),
        api_path="/predict",
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=SETTINGS.get("workers_per_device", 2),
        fast_queue=True,  # responses over ZeroMQ (ipc:// in /tmp) instead of a Manager queue
    )
    signal.signal(signal.SIGTERM, _interrupt(os.getpid()))
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
