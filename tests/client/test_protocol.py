"""Client logic that needs no server: encoding, retry policy, parsing."""

import http.client
import socket

import aiohttp
import numpy as np
import pytest
from geventhttpclient.response import HTTPConnectionClosed
from PIL import Image
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from resnet_triton.client import Classifier
from resnet_triton.client.protocol import (
    ClientError,
    Failure,
    Job,
    ModelInfo,
    Prediction,
    Reply,
    _Protocol,
    encode_image,
    encoded_batch,
    failure_of,
    parse_classification,
)


def test_parse_keeps_colons_in_labels():
    p = parse_classification(b"0.25:3:class: with colon")
    assert (p.score, p.index, p.label) == (0.25, 3, "class: with colon")


class _Answered:
    """What tritonclient's InferResult gives parse(): the output and the response."""

    def __init__(self, response):
        self.response = response

    def as_numpy(self, name):
        return np.array([[b"0.9:1:dog"]], dtype=object)

    def get_response(self):
        return self.response


def test_the_answering_version_is_read_from_grpc_and_http_responses():
    info = ModelInfo("m", "IMAGE", "SCORES", 32)
    grpc = _Protocol.parse(_Answered(service_pb2.ModelInferResponse(model_version="7")), info, 1, 1)
    assert (grpc.model_version, grpc.rows) == ("7", [(Prediction("dog", 1, 0.9),)])
    assert _Protocol.parse(_Answered({"model_version": "7"}), info, 1, 1).model_version == "7"
    assert _Protocol.parse(_Answered({"outputs": []}), info, 1, 1).model_version == ""


def test_arrays_and_pil_images_are_sent_as_lossless_png():
    array = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    _, data = encode_image(array)
    assert np.array_equal(np.asarray(Image.open(__import__("io").BytesIO(data))), array)
    with pytest.raises(ClientError, match="arrays must be uint8"):
        encode_image(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ClientError, match="cannot classify a dict"):
        encode_image({})


def triton_error(status: str, message: str = "x") -> InferenceServerException:
    return InferenceServerException(message, status=status)


# What tritonclient raises (statuses as it reports them, and the HTTP clients' socket,
# geventhttpclient and aiohttp errors, unwrapped) -> the policy's category.
FAILURES = [
    (triton_error("StatusCode.UNAVAILABLE"), Failure.UNAVAILABLE),
    (triton_error("503"), Failure.UNAVAILABLE),
    (triton_error("502"), Failure.UNAVAILABLE),
    (ConnectionRefusedError(111, "Connection refused"), Failure.UNAVAILABLE),
    (ConnectionResetError(104, "Connection reset by peer"), Failure.UNAVAILABLE),
    # A proxy accepted the connection and the server behind it is gone.
    (HTTPConnectionClosed("connection closed."), Failure.UNAVAILABLE),
    (http.client.RemoteDisconnected("closed"), Failure.UNAVAILABLE),
    (aiohttp.ServerDisconnectedError(), Failure.UNAVAILABLE),
    (aiohttp.ClientConnectorError(None, ConnectionRefusedError(111, "refused")),
     Failure.UNAVAILABLE),
    (triton_error("StatusCode.INVALID_ARGUMENT"), Failure.INVALID_INPUT),
    (triton_error("400"), Failure.INVALID_INPUT),
    (triton_error("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"), Failure.TIMEOUT),
    (triton_error("504"), Failure.TIMEOUT),
    # geventhttpclient's network_timeout (socket.timeout) and aiohttp's total timeout
    # (asyncio.TimeoutError): both TimeoutError since Python 3.10 and 3.11.
    (TimeoutError("timed out"), Failure.TIMEOUT),
    (aiohttp.ServerTimeoutError("read"), Failure.TIMEOUT),  # a connection error too
    (triton_error("StatusCode.NOT_FOUND", "Request for unknown model"), Failure.OTHER),
    (triton_error("404", "Request for unknown model"), Failure.OTHER),
    (triton_error("StatusCode.INTERNAL"), Failure.OTHER),
    (triton_error("500"), Failure.OTHER),
    # Triton's gRPC answer to a wrong admin key: UNAVAILABLE, and it will stay wrong.
    (triton_error("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header "
                  "'triton-grpc-protocol-admin-key'"), Failure.OTHER),
    (triton_error("403", "This API is restricted, expecting header 'admin-key'"), Failure.OTHER),
    (socket.gaierror(-2, "Name or service not known"), Failure.OTHER),
    (ValueError("a bug, not the network"), Failure.OTHER),
]  # fmt: skip


@pytest.mark.parametrize(("error", "failure"), FAILURES, ids=lambda v: repr(v)[:60])
def test_each_failure_has_one_category(error, failure):
    assert failure_of(error) is failure


@pytest.mark.parametrize(
    ("error", "delays", "message", "failure"),
    [(triton_error("StatusCode.UNAVAILABLE", "down"), [0.01, 0.02],
      "Triton at localhost:1 unavailable after 3 attempts: down", Failure.UNAVAILABLE),
     (TimeoutError("timed out"), [], "no answer from localhost:1 within 0.5 s: timed out",
      Failure.TIMEOUT),
     (TimeoutError(), [], "no answer from localhost:1 within 0.5 s: TimeoutError",
      Failure.TIMEOUT),
     (triton_error("400", "image 0: not a decodable image"), [],
      "image 0: not a decodable image", Failure.INVALID_INPUT),
     (triton_error("StatusCode.NOT_FOUND", "unknown model"), [], "unknown model",
      Failure.OTHER)],
)  # fmt: skip
def test_only_an_unavailable_server_is_waited_for(error, delays, message, failure):
    protocol = _Protocol("localhost:1", "grpc", "m", 0.5, 2, 0.01, 1)
    waited = []
    with pytest.raises(ClientError) as raised:
        for attempt in range(protocol.retries + 1):
            waited.append(protocol.retry_delay(error, attempt))
    assert (waited, str(raised.value), raised.value.failure) == (delays, message, failure)


def test_only_an_invalid_input_splits_a_batch():
    job = Job([b"a", b"b", b"c"], max_batch_size=2)
    first, second = job.batches
    invalid = ClientError("image 0: not a decodable image", Failure.INVALID_INPUT)
    assert job.refused(first, invalid) == [[first[0]], [first[1]]]
    assert job.refused(first[:1], invalid) == []  # one image: its own error
    job.answered(first[1:], Reply([(Prediction("cat", 0, 0.9),)], "3"))
    assert job.refused(second, ClientError("timed out", Failure.TIMEOUT)) == []
    results = job.results()
    assert [r.error for r in results] == ["image 0: not a decodable image", None, "timed out"]
    assert [r.model_version for r in results] == [None, "3", None]
    for failure in (Failure.UNAVAILABLE, Failure.TIMEOUT, Failure.OTHER):
        job = Job([b"a", b"b"], max_batch_size=2)
        assert job.refused(job.batches[0], ClientError("down", failure)) == []
        assert [r.error for r in job.results()] == ["down", "down"]


def test_retries_back_off_then_give_up(monkeypatch):
    classifier = Classifier.__new__(Classifier)  # no server: only the retry loop runs
    classifier.retries, classifier.backoff_s, classifier._shm = 2, 0.01, None
    classifier.protocol, classifier.model, classifier.timeout_s = "grpc", "m", 1.0
    classifier.url, classifier.headers, classifier._api_key = "localhost:1", None, None
    classifier.info = ModelInfo("m", "IMAGE", "SCORES", 32)
    classifier.module = __import__("tritonclient.grpc", fromlist=["x"])
    calls, sleeps = [], []

    class Flaky:
        def infer(self, *args, **kwargs):
            calls.append(1)
            raise InferenceServerException("busy", status="StatusCode.UNAVAILABLE")

    monkeypatch.setattr(classifier, "_client", lambda: Flaky())
    monkeypatch.setattr("resnet_triton.client.classifier.time.sleep", sleeps.append)
    with pytest.raises(ClientError, match="unavailable after 3 attempts: busy"):
        classifier._infer([b"x"], 1)
    assert len(calls) == 3 and sleeps == [0.01, 0.02]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_uint8_image_input_gets_zero_padded_rows(protocol):
    """A DALI ensemble (serving.preprocess_backend: dali) takes UINT8 [-1], not BYTES."""
    module = __import__(f"tritonclient.{protocol}", fromlist=["x"])
    client = _Protocol(None, protocol, "m", 1.0, 0, 0.1, 1)
    info = ModelInfo("m", "IMAGE", "SCORES", 32, "UINT8")
    infer_input, _ = client.request(module, info, [b"\xff\xd8abc", b"\x89P"], top_k=1)
    assert (infer_input.datatype(), infer_input.shape()) == ("UINT8", [2, 5])
    rows = encoded_batch([b"\xff\xd8abc", b"\x89P"], "UINT8")
    assert rows.tolist() == [[0xFF, 0xD8, 97, 98, 99], [0x89, 80, 0, 0, 0]]
    bytes_input, _ = client.request(module, ModelInfo("m", "IMAGE", "SCORES", 32), [b"ab"], 1)
    assert (bytes_input.datatype(), bytes_input.shape()) == ("BYTES", [1, 1])
    with pytest.raises(
        ClientError, match="the model's image input is FP32; expected BYTES or UINT8"
    ):
        encoded_batch([b"ab"], "FP32")


def test_a_job_marks_answers_below_the_threshold_unknown():
    job = Job([b"a", b"b"], max_batch_size=2, reject_below=0.6)
    rows = [(Prediction("cat", 0, 0.59), Prediction("dog", 1, 0.41)),
            (Prediction("dog", 1, 0.60), Prediction("cat", 0, 0.40))]  # fmt: skip
    job.answered(job.batches[0], Reply(rows, "1"))
    first, second = job.results()
    assert (first.unknown, first.answer, first.top1.label) == (True, "unknown", "cat")
    assert (second.unknown, second.answer) == (False, "dog")
    assert Job([b"a"], 1).reject_below is None


def test_a_malformed_threshold_parameter_is_named():
    protocol = _Protocol("localhost:1", "grpc", "ensemble", 1.0, 0, 0.0, 1)
    with pytest.raises(ClientError) as error:
        protocol._threshold("high")
    assert str(error.value) == (
        "model 'ensemble' at localhost:1: parameter reject_below is 'high', not a number"
    )
