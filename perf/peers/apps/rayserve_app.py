"""Ray Serve: an ingress deployment that decodes, in front of a batched classifier
deployment, the model composition its documentation builds for a preprocessing step and a
model (each its own deployment, scaled and given CPUs on its own).

    ONNX_MODEL=... ORT_THREADS=2 PEER_SETTINGS='{"ingress_replicas": 2, "max_batch_size": 16,
        "batch_wait_ms": 10}' python rayserve_app.py --port 8000 --temp-dir /tmp/rs-x

Starts a local Ray of its own (the machine's 2 CPUs, no dashboard) and stops it, with
every raylet, GCS and worker process, on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from model import ImageDecodeError, Model
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

SETTINGS = json.loads(os.environ.get("PEER_SETTINGS", "{}"))
CPUS = 2  # the machine's cores, half reserved for each deployment
ROUTE = "/classify"
# Ray's longest Unix socket, under its temp folder (a pid has up to 7 digits), and the
# 107 characters a socket path may have.
SOCKET_ROOM = 107 - len("/session_2026-12-05_05-51-19_088005_4194304/sockets/plasma_store")


@serve.deployment
class Classifier:
    """A dynamic batch of pixels -> one answer per request."""

    def __init__(self, max_batch_size: int, batch_wait_s: float):
        self.model = Model.load()
        self.classify.set_max_batch_size(max_batch_size)
        self.classify.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch
    async def classify(self, pixels: list[np.ndarray]) -> list[dict]:
        # Inference in a thread keeps the replica's event loop queueing the next batch.
        return await asyncio.to_thread(self._answers, np.stack(pixels))

    def _answers(self, pixels: np.ndarray) -> list[dict]:
        return self.model.answers(self.model.scores(pixels))  # (N, 3, crop, crop) uint8 in


@serve.deployment
class Ingress:
    """The raw body (an encoded image) -> pixels -> the classifier's answer as JSON."""

    def __init__(self, classifier: DeploymentHandle):
        self.classifier = classifier
        self.model = Model.load(threads=1)  # only its preprocessing settings are used

    async def __call__(self, request: Request):
        body = await request.body()
        try:
            pixels = await asyncio.to_thread(self.model.pixels, body)  # (3, crop, crop) uint8
        except ImageDecodeError as exc:
            return PlainTextResponse(str(exc), status_code=422)  # this request only
        return JSONResponse(await self.classifier.classify.remote(pixels))


def application(settings: dict) -> serve.Application:
    """The two deployments with the searched settings: replicas per deployment, each
    deployment's half of the CPUs split among its replicas, batch size and wait."""
    batch = settings.get("max_batch_size", 16)
    ingress_replicas = settings.get("ingress_replicas", 2)
    classifier_replicas = settings.get("classifier_replicas", 1)
    # Room for one batch running and the next one forming; the ingress holds as many
    # requests, or the classifier's batches could never fill.
    ongoing = 2 * batch
    classifier = Classifier.options(
        num_replicas=classifier_replicas,
        max_ongoing_requests=ongoing,
        ray_actor_options={"num_cpus": CPUS / 2 / classifier_replicas},
    ).bind(batch, settings.get("batch_wait_ms", 10) / 1000)
    return Ingress.options(
        num_replicas=ingress_replicas,
        max_ongoing_requests=ongoing,
        ray_actor_options={"num_cpus": CPUS / 2 / ingress_replicas},
    ).bind(classifier)


def ray_temp_dir(wanted: Path) -> tuple[Path, bool]:
    """`wanted` when Ray's sockets fit under it, else a short folder of this start in
    /tmp; True when that folder is ours to remove."""
    if len(str(wanted.resolve())) <= SOCKET_ROOM:
        return wanted, False
    return Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp")), True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--temp-dir", type=Path, required=True, help="Ray's sessions and logs")
    args = parser.parse_args(argv)
    temp, ours = ray_temp_dir(args.temp_dir)
    # Ray's token auth stays on, with a token of this start instead of ~/.ray/auth_token.
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    ray.init(num_cpus=CPUS, include_dashboard=False, _temp_dir=str(temp))
    # SIGTERM unwinds like Ctrl-C, through the shutdowns below. Installed after ray.init,
    # whose crash handler would otherwise take SIGTERM and abort the driver 3 s later,
    # in the middle of the shutdown.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(application(SETTINGS), name="classifier", route_prefix=ROUTE)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        began = time.monotonic()
        serve.shutdown()
        ray.shutdown()
        if ours:
            shutil.rmtree(temp, ignore_errors=True)
        print(f"Ray stopped in {time.monotonic() - began:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
