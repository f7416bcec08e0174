"""System shared memory for the synchronous client: `ShmPool`, regions registered with the
server once and reused by every request, instead of a region made, registered, unregistered
and destroyed per request (which costs more than the copy it saves).

Each request in flight holds one region while the server reads it, so a client with
`concurrency` threads ends up with that many. A region is made as large as the request that
first needs it, and is made again larger (and registered again, under its name) only when a
request needs more bytes than it has: once the largest request has been sent, the pool
registers nothing more. close() unregisters and destroys every region.

A server that restarts (or a rollout's new server behind the same address) knows none of
the regions: `send` registers the request's region again, once, and sends it again.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from tritonclient.utils import (
    InferenceServerException,
    serialize_byte_tensor,
    serialized_byte_size,
)

# tritonclient 2.51 imports pkg_resources here (pyproject.toml pins setuptools<81 for it);
# its deprecation warning would greet every CLI user on stderr.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
    import tritonclient.utils.shared_memory as shm

from resnet_triton.client.failures import REQUEST_ERRORS
from resnet_triton.client.protocol import ClientError


def region_contents(batch: np.ndarray) -> tuple[np.ndarray, int]:
    """What a region holds for one request's encoded images, and its size in bytes: BYTES
    elements length-prefixed as Triton reads them, UINT8 rows as they are."""
    if batch.dtype == np.object_:
        serialized = serialize_byte_tensor(batch)  # one buffer of 4-byte length + bytes
        return serialized, serialized_byte_size(serialized)
    return batch, batch.nbytes


T = TypeVar("T")


# How Triton 2.51 refuses a request naming a region it does not know, over gRPC and HTTP:
# NOT_FOUND / 404, "Unable to find shared memory region: '<name>'".
NOT_FOUND = ("StatusCode.NOT_FOUND", "404")


def forgotten(exc: BaseException, region: str) -> bool:
    """Whether a request failed because the server does not know `region`: it was
    registered with a server that has stopped since."""
    if not isinstance(exc, InferenceServerException):
        return False
    return str(exc.status()) in NOT_FOUND and f"'{region}'" in (exc.message() or "")


@dataclass
class Region:
    name: str  # the server's name for it; its POSIX key is "/name"
    handle: object = None  # tritonclient's handle while the region exists here
    byte_size: int = 0  # registered with the server (0: not registered)


class ShmPool:
    """Shared-memory regions for one client's requests; safe to share between threads.

    client: returns the calling thread's tritonclient client (registration is a call);
    headers: the restricted API's admin-key header (with the API key, where there is one);
    timeout: tritonclient's per-call timeout for (un)registering, gRPC's client_timeout
    ({} over HTTP, whose client has its own): without one, gRPC waits for ever.
    """

    def __init__(self, client: Callable[[], object], headers: dict[str, str] | None,
                 timeout: dict[str, float]):  # fmt: skip
        self._client = client
        self._headers = headers
        self._timeout = timeout
        self._prefix = f"resnet_triton_client_{uuid.uuid4().hex[:12]}"
        self._regions: list[Region] = []
        self._free: list[Region] = []
        self._lock = threading.Lock()

    def send(self, batch: np.ndarray, infer: Callable[[str, int], T]) -> T:
        """infer(region name, bytes used) with the encoded batch in a region of the pool's;
        a region the server has forgotten is registered again and infer called once more."""
        with self._holding(batch) as (region, byte_size):
            try:
                return infer(region.name, byte_size)
            except InferenceServerException as exc:
                if not forgotten(exc, region.name):
                    raise
            self._register(region, region.byte_size)
            return infer(region.name, byte_size)

    @contextmanager
    def _holding(self, batch: np.ndarray) -> Iterator[tuple[Region, int]]:
        """A region holding the encoded batch for one request, and the bytes used. The
        region is the caller's until the block ends."""
        contents, byte_size = region_contents(batch)
        region = self._take()
        try:
            if region.byte_size < byte_size:
                self._resize(region, byte_size)
            try:
                shm.set_shared_memory_region(region.handle, [contents])
            except shm.SharedMemoryException as exc:
                raise ClientError(f"shared memory region {region.name}: {exc}") from None
            yield region, byte_size
        finally:
            with self._lock:
                self._free.append(region)

    def _take(self) -> Region:
        with self._lock:
            if not self._free:
                self._regions.append(Region(f"{self._prefix}_{len(self._regions)}"))
                return self._regions[-1]
            # The largest free one: the likeliest to fit without being made again.
            region = max(self._free, key=lambda r: r.byte_size)
            self._free.remove(region)
            return region

    def _resize(self, region: Region, byte_size: int) -> None:
        """Make the region `byte_size` bytes and register it; raises what the server or
        the system raised, leaving the region unregistered or as it was."""
        key = f"/{region.name}"
        if region.handle is not None:
            self._client().unregister_system_shared_memory(
                region.name, headers=self._headers, **self._timeout
            )
            region.byte_size = 0
            handle, region.handle = region.handle, None
            shm.destroy_shared_memory_region(handle)
        try:
            region.handle = shm.create_shared_memory_region(region.name, key, byte_size)
        except shm.SharedMemoryException as exc:
            raise ClientError(f"cannot make shared memory region {key}: {exc}") from None
        try:
            self._register(region, byte_size)
        except BaseException:
            handle, region.handle = region.handle, None
            shm.destroy_shared_memory_region(handle)
            raise

    def _register(self, region: Region, byte_size: int) -> None:
        """Register the region's `byte_size` bytes with the server under its name."""
        region.byte_size = 0  # until the server says it knows it
        self._client().register_system_shared_memory(
            region.name, f"/{region.name}", byte_size, headers=self._headers, **self._timeout
        )
        region.byte_size = byte_size

    def close(self) -> None:
        """Unregister every region from the server and destroy it here."""
        with self._lock:
            regions = [r for r in self._regions if r.handle is not None]
            self._regions, self._free = [], []
        for region in regions:
            try:
                if region.byte_size:
                    self._client().unregister_system_shared_memory(
                        region.name, headers=self._headers, **self._timeout
                    )
            except REQUEST_ERRORS:
                pass  # closing must not fail for a server that stopped first (and dropped them)
            finally:
                shm.destroy_shared_memory_region(region.handle)
