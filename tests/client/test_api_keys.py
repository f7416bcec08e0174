"""Inference keys and the proxy's rate limit, client side (issue 36): the key goes out as
`authorization: Bearer <key>` on every request of both protocols, sync and async; a
missing or refused key is said plainly and never echoed; a throttled request waits what
the proxy asks, within `retries`. The refusals come from tests/refusing_proxy.py (the
proxy's door only); the real nginx is tested end to end in tests/docker."""

import asyncio
import threading

import pytest
from conftest import PHOTOS
from refusing_proxy import refusing
from tritonclient.utils import InferenceServerException

from resnet_triton import cli
from resnet_triton.client import API_KEY_ENV, AsyncClassifier, Classifier, ClientError
from resnet_triton.client.protocol import Failure, ModelInfo, _Protocol, failure_of

KEY = "k3y-for-tests-0123456789abcdef"
BEARER = f"Bearer {KEY}"
PROTOCOLS = ["grpc", "http"]


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)


def connect_sync(url, protocol, **kwargs):
    with Classifier(url, protocol, retries=0, timeout_s=5, **kwargs):
        pass


def connect_async(url, protocol, **kwargs):
    async def run():
        client = await AsyncClassifier.connect(url, protocol, retries=0, timeout_s=5, **kwargs)
        await client.close()

    asyncio.run(run())


CONNECTS = {"sync": connect_sync, "async": connect_async}


@pytest.mark.parametrize("kind", list(CONNECTS))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_key_goes_out_as_a_bearer_header_and_a_refusal_never_echoes_it(protocol, kind):
    with refusing(protocol, "unknown key") as proxy, pytest.raises(ClientError) as raised:
        CONNECTS[kind](proxy.url, protocol, api_key=KEY)
    assert proxy.seen and all(auth == BEARER for _, auth in proxy.seen), proxy.seen
    message = str(raised.value)
    assert f"{proxy.url}: API key refused" in message, message
    assert "--api-key" in message and API_KEY_ENV in message
    assert KEY not in message


@pytest.mark.parametrize("kind", list(CONNECTS))
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_key_defaults_to_the_environment(protocol, kind, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, KEY)
    with refusing(protocol, "unknown key") as proxy, pytest.raises(ClientError):
        CONNECTS[kind](proxy.url, protocol)
    assert proxy.seen and all(auth == BEARER for _, auth in proxy.seen), proxy.seen


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_without_a_key_the_error_says_how_to_pass_one(protocol):
    with refusing(protocol, "no key") as proxy, pytest.raises(ClientError) as raised:
        connect_sync(proxy.url, protocol)
    assert proxy.seen and all(auth is None for _, auth in proxy.seen), proxy.seen
    message = str(raised.value)
    assert f"{proxy.url}: API key missing" in message, message
    assert "--api-key" in message and API_KEY_ENV in message


def unconnected_sync(url: str, protocol: str, **kwargs) -> Classifier:
    """A Classifier past its connect (the proxy refuses that too): the infer path alone."""
    classifier = Classifier.__new__(Classifier)
    _Protocol.__init__(classifier, url, protocol, "m", 5.0, 1, 0.01, 1, **kwargs)
    classifier.module = __import__(f"tritonclient.{protocol}", fromlist=["x"])
    classifier._local, classifier._lock = threading.local(), threading.Lock()
    classifier._clients, classifier._shm, classifier._pool = [], None, None
    classifier.info = ModelInfo("m", "IMAGE", "SCORES", 32)
    return classifier


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_throttled_request_carries_the_key_and_waits_what_the_proxy_asks(protocol, monkeypatch):
    sleeps = []
    monkeypatch.setattr("resnet_triton.client.classifier.time.sleep", sleeps.append)
    with refusing(protocol, "throttled") as proxy:
        classifier = unconnected_sync(proxy.url, protocol, api_key=KEY)
        try:
            with pytest.raises(ClientError) as raised:
                classifier.classify_bytes([PHOTOS[0].read_bytes()])
        finally:
            classifier.close()
    # retries=1: sent twice, after max(0.01 s backoff, the proxy's "retry after 2 s").
    assert [auth for _, auth in proxy.seen] == [BEARER, BEARER]
    assert sleeps == [2.0]
    assert raised.value.failure is Failure.THROTTLED
    assert "rate limit exceeded" in str(raised.value) and KEY not in str(raised.value)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_async_client_sends_the_key_with_each_inference(protocol):
    async def run(url):
        client = AsyncClassifier(url, protocol, retries=0, api_key=KEY)
        client.info = ModelInfo("m", "IMAGE", "SCORES", 32)
        try:
            return await client.classify([PHOTOS[0].read_bytes()])
        finally:
            await client.close()

    with refusing(protocol, "no key") as proxy:
        [result] = asyncio.run(run(proxy.url))
    assert [auth for _, auth in proxy.seen] == [BEARER]
    assert "API key missing" in result.error


def triton_error(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(message, status=status)


THROTTLED = "rate limit exceeded for this client: retry after 2 s"


@pytest.mark.parametrize(
    ("error", "failure"),
    [(triton_error("429", THROTTLED), Failure.THROTTLED),
     (triton_error("StatusCode.RESOURCE_EXHAUSTED", THROTTLED), Failure.THROTTLED),
     # gRPC's own size limit is RESOURCE_EXHAUSTED too, and stays too large however often.
     (triton_error("StatusCode.RESOURCE_EXHAUSTED",
                   "Received message larger than max (9000000 vs. 4194304)"), Failure.OTHER),
     (triton_error("401", "no API key: send Authorization: Bearer"), Failure.OTHER),
     (triton_error("StatusCode.UNAUTHENTICATED", "no API key"), Failure.OTHER),
     (triton_error("403", "unknown API key"), Failure.OTHER),
     (triton_error("StatusCode.PERMISSION_DENIED", "unknown API key"), Failure.OTHER)],
)  # fmt: skip
def test_a_throttled_request_has_its_own_category(error, failure):
    assert failure_of(error) is failure


@pytest.mark.parametrize(
    ("message", "backoff_s", "delays"),
    [(THROTTLED, 0.01, [2.0, 2.0]),  # the proxy's "retry after 2 s" over a short backoff
     (THROTTLED, 1.5, [2.0, 3.0]),  # the backoff where it is longer
     ("rate limit exceeded", 0.01, [0.01, 0.02])],  # no figure: the backoff alone
)  # fmt: skip
def test_a_throttled_request_waits_the_longer_of_backoff_and_retry_after(
    message, backoff_s, delays
):
    protocol = _Protocol("localhost:1", "http", "m", 1.0, 2, backoff_s, 1)
    waited = []
    with pytest.raises(ClientError) as raised:
        for attempt in range(protocol.retries + 1):
            waited.append(protocol.retry_delay(triton_error("429", message), attempt))
    assert waited == delays
    assert str(raised.value) == f"localhost:1 throttled this client, 3 attempts: {message}"
    assert raised.value.failure is Failure.THROTTLED


@pytest.mark.parametrize(
    ("status", "said"),
    [("401", "API key missing"),
     ("StatusCode.UNAUTHENTICATED", "API key missing"),
     ("403", "API key refused"), ("StatusCode.PERMISSION_DENIED", "API key refused")],
)  # fmt: skip
def test_a_missing_or_refused_key_is_not_retried_and_never_echoed(status, said):
    protocol = _Protocol("localhost:1", "grpc", "m", 1.0, 3, 0.01, 1, api_key=KEY)
    with pytest.raises(ClientError) as raised:  # at the first attempt: no retry
        protocol.retry_delay(triton_error(status, f"key {KEY} is not one of ours"), 0)
    message = str(raised.value)
    assert f"localhost:1: {said}" in message and KEY not in message, message
    assert "--api-key" in message and API_KEY_ENV in message


def test_triton_refusing_the_admin_key_is_not_an_api_key_problem():
    protocol = _Protocol("localhost:1", "http", "m", 1.0, 3, 0.01, 1, api_key=KEY)
    restricted = "This API is restricted, expecting header 'admin-key'"
    with pytest.raises(ClientError) as raised:
        protocol.retry_delay(triton_error("403", restricted), 0)
    assert str(raised.value) == restricted


def test_the_headers_carry_the_key_only_when_there_is_one():
    classifier = unconnected_sync("localhost:1", "grpc", api_key=KEY)
    assert classifier.headers == {"authorization": BEARER}
    # The shared-memory calls (restricted) carry both keys; inferences only the API key.
    both = {"authorization": BEARER, "triton-grpc-protocol-admin-key": "admin"}
    assert classifier._admin_headers("admin") == both
    assert _Protocol("localhost:1", "grpc", "m", 1.0, 0, 0.1, 1).headers is None


@pytest.mark.parametrize("command", ["classify", "ui"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_commands_take_an_api_key(command, protocol, capsys):
    if command == "ui":
        pytest.importorskip("uvicorn")
    paths = [str(PHOTOS[0])] if command == "classify" else []
    with refusing(protocol, "unknown key") as proxy:
        code = cli.main([command, *paths, "--protocol", protocol, "--url", proxy.url,
                         "--api-key", KEY])  # fmt: skip
    assert code == 1
    assert proxy.seen and all(auth == BEARER for _, auth in proxy.seen), proxy.seen
    err = capsys.readouterr().err
    assert "API key refused" in err and KEY not in err, err
