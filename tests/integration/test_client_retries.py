"""The client's one retry policy (client/protocol.py, Failure) against a real Triton that
stops and one that is slow, for the sync and asyncio clients over gRPC and HTTP. Attempts
are counted where every one of them goes: tritonclient's infer."""

import asyncio
import threading
from collections import Counter

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from conftest import NAMES, rerendered, served

from resnet_triton.client import AsyncClassifier, Classifier
from resnet_triton.data import image_folder
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.server import Ports, TritonServer

pytestmark = pytest.mark.integration

PROTOCOLS = ("grpc", "http")
# (protocol, asynchronous) -> the tritonclient module each client sends with.
MODULES = {
    ("grpc", False): grpcclient, ("http", False): httpclient,
    ("grpc", True): grpcaio, ("http", True): httpaio,
}  # fmt: skip
DELAY_S = 30  # the slow server's wait for a fuller batch, far beyond the client's timeout


@pytest.fixture
def attempts(monkeypatch) -> Counter:
    """(protocol, asynchronous) -> how many requests tritonclient was asked to send."""
    counts, lock = Counter(), threading.Lock()
    for kind, module in MODULES.items():
        send = module.InferenceServerClient.infer

        def count(kind=kind):
            with lock:
                counts[kind] += 1

        if kind[1]:

            async def infer(self, *args, _send=send, _count=count, **kwargs):
                _count()
                return await _send(self, *args, **kwargs)
        else:

            def infer(self, *args, _send=send, _count=count, **kwargs):
                _count()
                return _send(self, *args, **kwargs)

        monkeypatch.setattr(module.InferenceServerClient, "infer", infer)
    return counts


def url(server, protocol) -> str:
    return f"localhost:{server.ports.grpc if protocol == 'grpc' else server.ports.http}"


def images(digits, count) -> list[str]:
    return [path for path, _ in image_folder(digits / "val").samples[:count]]


async def classify_after_stop(server, paths, done: list[int], **options) -> dict:
    """Every client connected while the server runs, then the server stopped:
    (protocol, asynchronous) -> results; the sync clients' progress goes to `done`."""
    sync = {p: Classifier(url(server, p), p, **options) for p in PROTOCOLS}
    aio = {p: await AsyncClassifier.connect(url(server, p), p, **options) for p in PROTOCOLS}
    server.stop()
    answers = {}
    for protocol in PROTOCOLS:
        with sync[protocol] as classifier:
            answers[protocol, False] = classifier.classify(paths, progress=done.append)
        async with aio[protocol] as client:
            answers[protocol, True] = await client.classify(paths)
    return answers


def test_a_stopped_server_costs_each_request_its_retries_not_each_image(
    repository, digits, tmp_path, attempts
):
    paths = images(digits, 70)  # requests of 32 + 32 + 6
    server = TritonServer(repository, Ports.free(), log_path=tmp_path / "triton.log",
                          exit_timeout_s=3).start()  # fmt: skip
    done = []
    try:
        server.wait_ready([NAMES.ensemble], timeout=180)
        answers = asyncio.run(classify_after_stop(server, paths, done, retries=2, backoff_s=0.01))
    finally:
        server.stop()
    assert attempts == {kind: 3 * 3 for kind in MODULES}  # 3 requests, each 1 + 2 retries
    assert sum(done) == 2 * 70  # the sync clients reported every image done
    for (protocol, _), results in answers.items():
        assert len(results) == 70
        for request in (results[:32], results[32:64], results[64:]):
            (error,) = {r.error for r in request}  # every image of a request, its error
            prefix = f"Triton at {url(server, protocol)} unavailable after 3 attempts: "
            assert error.startswith(prefix)
            assert "refused" in error or "Connect call failed" in error


@pytest.fixture(scope="module")
def slow_triton(repository, tmp_path_factory):
    """The session's model behind a preprocess batcher that waits DELAY_S for a full batch:
    a request of a few images is answered only after DELAY_S."""
    root = tmp_path_factory.mktemp("slow")
    serving = ServingConfig(preprocess_queue_delay_us=DELAY_S * 1_000_000)
    with served(rerendered(repository, root, serving), root) as server:
        yield server


# What each client reports when the time is up.
TIMEOUTS = {
    ("grpc", False): "Deadline Exceeded", ("http", False): "timed out",
    ("grpc", True): "Deadline Exceeded", ("http", True): "TimeoutError",
}  # fmt: skip


@pytest.mark.parametrize("kind", list(MODULES), ids=lambda k: f"{k[0]}-{'aio' if k[1] else 'sync'}")
def test_a_slow_server_is_timed_out_once_not_retried_or_split(slow_triton, digits, attempts, kind):
    protocol, asynchronous = kind
    address = url(slow_triton, protocol)
    paths = images(digits, 3)  # one request
    options = {"timeout_s": 1.0, "retries": 2, "backoff_s": 0.01}
    if asynchronous:

        async def run():
            async with await AsyncClassifier.connect(address, protocol, **options) as client:
                return await client.classify(paths)

        results = asyncio.run(run())
    else:
        with Classifier(address, protocol, **options) as classifier:
            results = classifier.classify(paths)
    assert attempts == {kind: 1}
    message = f"no answer from {address} within 1 s: {TIMEOUTS[kind]}"
    assert [r.error for r in results] == [message] * 3
