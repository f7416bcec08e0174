"""The retry policy's vocabulary: what a failed request's error means (`Failure`,
`failure_of`), how long a throttled one is asked to wait, and what the proxy said of the
inference key. The package docstring (resnet_triton.client) describes the behaviour."""

from __future__ import annotations

import enum
import http.client
import re

import aiohttp
from tritonclient.utils import InferenceServerException

from resnet_triton.endpoints import API_KEY_ENV

# The inference key's default (API_KEY_ENV): the proxy in front of Triton (docker/nginx)
# asks for `Authorization: Bearer <key>` when keys are on.
HOW_TO_PASS_A_KEY = f"the key comes from --api-key or ${API_KEY_ENV} (api_key= in the library)"
# The proxy's 429 and RESOURCE_EXHAUSTED say how long to wait: "... retry after 2 s".
RETRY_AFTER = re.compile(r"retry after (\d+) s")
# What a request can raise besides our own errors: tritonclient's, and the HTTP clients'
# socket, geventhttpclient and aiohttp errors, which tritonclient lets through unwrapped.
REQUEST_ERRORS = (InferenceServerException, OSError, http.client.HTTPException, aiohttp.ClientError)
# The connection went away (refused, reset, closed before the answer: a server that
# stops or restarts, a proxy in front of one that is gone); geventhttpclient's
# HTTPConnectionClosed is an http.client.HTTPException.
CONNECTION_ERRORS = (ConnectionError, http.client.HTTPException, aiohttp.ClientConnectionError)


class Failure(enum.Enum):
    """Why a request failed, which decides what both clients do next: the retry policy."""

    # The server or the connection is unavailable and may come back: the request is sent
    # again after a backoff, up to `retries` times, then the batch fails.
    UNAVAILABLE = "unavailable"
    # The proxy's rate limit (HTTP 429, gRPC RESOURCE_EXHAUSTED): sent again after the
    # longer of the backoff and the wait the proxy names, up to `retries` times.
    THROTTLED = "throttled"
    # The server answered and refused the input (a bad image in the batch): a batch of
    # several is sent again one image at a time, so that only the bad image fails.
    INVALID_INPUT = "invalid input"
    # No answer in time: the batch fails at once (a retry would wait as long again and
    # add load to a server that is already behind).
    TIMEOUT = "timeout"
    # Anything else (an unknown model, a server error, a refused admin key, a missing or
    # refused API key): the batch fails at once.
    OTHER = "other"


# tritonclient's status: gRPC status codes, HTTP status codes as text.
STATUS_FAILURES = {
    "StatusCode.UNAVAILABLE": Failure.UNAVAILABLE, "502": Failure.UNAVAILABLE,
    "503": Failure.UNAVAILABLE,
    "StatusCode.INVALID_ARGUMENT": Failure.INVALID_INPUT, "400": Failure.INVALID_INPUT,
    "StatusCode.DEADLINE_EXCEEDED": Failure.TIMEOUT, "504": Failure.TIMEOUT,
    "StatusCode.RESOURCE_EXHAUSTED": Failure.THROTTLED, "429": Failure.THROTTLED,
}  # fmt: skip
# The proxy's refusals of the inference key (gRPC and HTTP): what the error says.
KEY_REFUSALS = {
    "StatusCode.UNAUTHENTICATED": "API key missing",
    "401": "API key missing",
    "StatusCode.PERMISSION_DENIED": "API key refused",
    "403": "API key refused",
}  # fmt: skip


def failure_of(exc: BaseException) -> Failure:
    """The policy's category of what a failed request raised."""
    if isinstance(exc, InferenceServerException):
        failure = STATUS_FAILURES.get(str(exc.status()), Failure.OTHER)
        # Triton's gRPC frontend answers a missing or wrong admin key with UNAVAILABLE;
        # it stays wrong however often it is sent.
        if failure is Failure.UNAVAILABLE and "is restricted" in message_of(exc):
            return Failure.OTHER
        # gRPC's own message size limit is RESOURCE_EXHAUSTED too; it stays too large.
        if failure is Failure.THROTTLED and "larger than max" in message_of(exc):
            return Failure.OTHER
        return failure
    # Before the connection errors: aiohttp's ServerTimeoutError is both.
    if isinstance(exc, TimeoutError):  # socket.timeout, asyncio's and aiohttp's
        return Failure.TIMEOUT
    if isinstance(exc, CONNECTION_ERRORS):
        return Failure.UNAVAILABLE
    return Failure.OTHER


def retry_after_s(exc: BaseException) -> float | None:
    """The wait a throttled request's message names ("retry after 2 s"), if it names one."""
    found = RETRY_AFTER.search(message_of(exc))
    return float(found.group(1)) if found else None


def key_refusal(exc: BaseException) -> str | None:
    """What the proxy said of the inference key, when it refused the request for it."""
    if not isinstance(exc, InferenceServerException):
        return None
    # Triton's own 403 for a restricted API is about the admin key, not this one.
    if "is restricted" in message_of(exc):
        return None
    return KEY_REFUSALS.get(str(exc.status()))


def message_of(exc: BaseException) -> str:
    """An error's text: tritonclient's message, or the exception's."""
    text = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
    return text or type(exc).__name__  # asyncio's TimeoutError has no text
