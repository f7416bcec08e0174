"""The asyncio client: `await AsyncClassifier.connect(...)`, over gRPC or HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from resnet_triton.client.failures import REQUEST_ERRORS
from resnet_triton.client.protocol import (
    ClientError,
    ImageLike,
    Job,
    ModelInfo,
    Reply,
    Result,
    _Item,
    _Protocol,
)
from resnet_triton.spec import Names


class AsyncClassifier(_Protocol):
    """asyncio client over tritonclient's aio modules: `await AsyncClassifier.connect(...)`."""

    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = Names().ensemble,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        concurrency: int = 4,
        api_key: str | None = None,
    ):
        """api_key: the inference key the proxy asks for (default $RESNET_TRITON_API_KEY),
        sent on every request."""
        super().__init__(url, protocol, model, timeout_s, retries, backoff_s, concurrency, api_key)
        self.module = grpcaio if self.grpc else httpaio
        if self.grpc:
            self.client = grpcaio.InferenceServerClient(self.url)
        else:
            self.client = httpaio.InferenceServerClient(self.url, conn_timeout=timeout_s)
        self.info: ModelInfo | None = None

    @classmethod
    async def connect(cls, *args, **kwargs) -> AsyncClassifier:
        self = cls(*args, **kwargs)
        try:
            ready = await self.client.is_model_ready(self.model, headers=self.headers)
            metadata = await self.client.get_model_metadata(self.model, headers=self.headers)
            config = await self.client.get_model_config(self.model, headers=self.headers)
        except (InferenceServerException, OSError) as exc:
            await self.close()
            raise self.connect_error(exc) from None
        try:
            self.info = self.model_info(metadata, config, ready)
        except ClientError:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncClassifier:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _infer(self, payloads: list[bytes], top_k: int) -> Reply:
        """One request, sent again while the server is unavailable (protocol.Failure);
        raises ClientError."""
        for attempt in range(self.retries + 1):
            try:
                infer_input, output = self.request(self.module, self.info, payloads, top_k)
                options = {"client_timeout": self.timeout_s} if self.grpc else {}
                result = await self.client.infer(
                    self.model, [infer_input], outputs=[output], headers=self.headers, **options
                )
                return self.parse(result, self.info, len(payloads), top_k)
            except REQUEST_ERRORS as exc:
                await asyncio.sleep(self.retry_delay(exc, attempt))
        raise AssertionError("unreachable")

    async def classify(self, images: Sequence[ImageLike], top_k: int = 1) -> list[Result]:
        """Every image classified, in order; failures are per image, in Result.error."""
        job = Job(images, self.info.max_batch_size, self.info.reject_below)
        limit = asyncio.Semaphore(max(1, self.concurrency))

        async def run(batch: list[_Item]) -> None:
            try:
                async with limit:
                    reply = await self._infer([i.data for i in batch], top_k)
                job.answered(batch, reply)
            except ClientError as exc:
                await asyncio.gather(*(run(alone) for alone in job.refused(batch, exc)))

        await asyncio.gather(*(run(batch) for batch in job.batches))
        return job.results()
