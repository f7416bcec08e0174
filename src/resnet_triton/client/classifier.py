"""The synchronous client: `Classifier`, over gRPC or HTTP, optionally through shared memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from resnet_triton.client.failures import REQUEST_ERRORS
from resnet_triton.client.protocol import (
    ClientError,
    ImageLike,
    Job,
    Prediction,
    Reply,
    Result,
    _Item,
    _Protocol,
    encoded_batch,
)
from resnet_triton.client.shm import ShmPool
from resnet_triton.endpoints import ADMIN_HEADER
from resnet_triton.spec import Names


class Classifier(_Protocol):
    """Synchronous client; safe to share between threads."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = Names().ensemble,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        concurrency: int = 4,
        shared_memory: bool = False,
        admin_key: str | None = None,
        api_key: str | None = None,
    ):
        """api_key: the inference key the proxy asks for (default $RESNET_TRITON_API_KEY),
        sent on every request; admin_key: Triton's, for the shared-memory APIs only."""
        super().__init__(url, protocol, model, timeout_s, retries, backoff_s, concurrency, api_key)
        self.module = grpcclient if self.grpc else httpclient
        if shared_memory and not admin_key:
            raise ClientError("shared memory needs the server's admin key (restricted API)")
        self._local = threading.local()
        self._clients = []  # (thread, its client), to close them all
        self._pool = None  # classify()'s threads, started on first use
        self._lock = threading.Lock()
        timeout = {"client_timeout": timeout_s} if self.grpc else {}
        headers = self._admin_headers(admin_key)
        self._shm = ShmPool(self._client, headers, timeout) if shared_memory else None
        client = self._client()
        try:
            ready = client.is_model_ready(model, headers=self.headers)
            metadata = client.get_model_metadata(model, headers=self.headers)
            config = client.get_model_config(model, headers=self.headers)
        except (InferenceServerException, OSError) as exc:
            raise self.connect_error(exc) from None
        self.info = self.model_info(metadata, config, ready)

    def _admin_headers(self, admin_key: str) -> dict[str, str]:
        """The restricted APIs' headers: the admin key, with the API key where there is one."""
        # Triton's gRPC frontend expects restricted-protocol headers with a prefix.
        header = f"triton-grpc-protocol-{ADMIN_HEADER}" if self.grpc else ADMIN_HEADER
        return {**(self.headers or {}), header: admin_key}

    def _client(self):
        # tritonclient's HTTP client is not thread-safe: one client per thread. A thread
        # that has ended leaves its client behind: closed here, so that a Classifier used
        # from short-lived threads holds connections for the live ones only.
        if not hasattr(self._local, "client"):
            if self.grpc:
                client = grpcclient.InferenceServerClient(self.url)
            else:
                client = httpclient.InferenceServerClient(
                    self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
                )
            self._local.client = client
            with self._lock:
                ended = [(t, c) for t, c in self._clients if not t.is_alive()]
                for thread_and_client in ended:
                    thread_and_client[1].close()
                    self._clients.remove(thread_and_client)
                self._clients.append((threading.current_thread(), client))
        return self._local.client

    @property
    def shared_memory(self) -> bool:
        return self._shm is not None

    def close(self) -> None:
        """Release the shared-memory regions, close every connection (Triton waits for
        open HTTP connections on shutdown)."""
        if self._shm is not None:
            self._shm.close()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        with self._lock:
            for _, client in self._clients:
                client.close()
            self._clients.clear()
        self._local = threading.local()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _infer(self, payloads: list[bytes], top_k: int) -> Reply:
        """One request, sent again while the server is unavailable (protocol.Failure);
        raises ClientError."""
        top_k = min(top_k, self.info.classes or top_k)  # Triton answers at most every class
        for attempt in range(self.retries + 1):
            try:
                result = self._send(payloads, top_k)
                return self.parse(result, self.info, len(payloads), top_k)
            except REQUEST_ERRORS as exc:
                time.sleep(self.retry_delay(exc, attempt))
        raise AssertionError("unreachable")

    def _send(self, payloads: list[bytes], top_k: int):
        output = self.output_for(self.module, self.info, top_k)
        options = {"client_timeout": self.timeout_s} if self.grpc else {}
        if self._shm is None:
            infer_input, _ = self.request(self.module, self.info, payloads, top_k)
            return self._client().infer(
                self.model, [infer_input], outputs=[output], headers=self.headers, **options
            )
        # The same encoding as in the body: (n, 1) BYTES or (n, longest) UINT8.
        batch = encoded_batch(payloads, self.info.input_datatype)
        infer_input = self.input_for(self.module, self.info, batch)

        def infer(region: str, byte_size: int):
            infer_input.set_shared_memory(region, byte_size)
            return self._client().infer(
                self.model, [infer_input], outputs=[output], headers=self.headers, **options
            )

        return self._shm.send(batch, infer)

    def classify_bytes(self, images: list[bytes], top_k: int = 1) -> list[tuple[Prediction, ...]]:
        """Send the images as one request; raises ClientError if the server refuses it."""
        if len(images) > self.info.max_batch_size:
            raise ClientError(
                f"{len(images)} images in one request; {self.model} takes at most "
                f"{self.info.max_batch_size} (classify() splits longer lists)"
            )
        return self._infer(images, top_k).rows

    def classify(self, images: Sequence[ImageLike], top_k: int = 1, progress=None) -> list[Result]:
        """Every image classified, in order; failures are per image, in Result.error.

        progress: called with the number of images each finished request covered.
        """
        job = Job(images, self.info.max_batch_size, self.info.reject_below)

        def run(batch: list[_Item]) -> None:
            try:
                job.answered(batch, self._infer([i.data for i in batch], top_k))
            except ClientError as exc:
                instead = job.refused(batch, exc)
                for alone in instead:
                    run(alone)
                if instead:
                    return  # the images alone reported their progress
            if progress:
                progress(len(batch))

        if len(job.batches) <= 1:  # one request: sent from this thread
            list(map(run, job.batches))
            return job.results()
        with self._lock:  # the same threads (and their connections) for every call
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, self.concurrency), "classify")
        list(self._pool.map(run, job.batches))
        return job.results()
