"""A bounded, opt-in sample of live traffic: what the served model was asked and answered.

Kept per served image: the encoded bytes as received, and a JSON record beside them
(the answer, its score, whether it was "unknown", the model version, the time). Kept
are every "unknown" answer (below the calibrated threshold: what the model is unsure
of, the first thing to label) and a `share` of the rest; nothing when capture is off,
the default.

The request path only offers: `Capture.offer` decides, and hands the item to a queue
that one writer thread empties. A full queue drops the item (counted in `dropped`)
rather than wait, so a slow disk never slows an answer. The writer keeps the folder
under `cap_bytes` by deleting the oldest captures first, before each write, so the
folder never holds more than the cap, however fast items arrive, and deletes captures
older than `retention_s`. An item larger than the cap is dropped.

Layout: <dir>/<time ns>-<id>.bin and .json. A capture stays on the host that served it
(the container's volume, the chart's): nothing here sends it anywhere.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from resnet_triton.errors import UserError

RECORD = ".json"
IMAGE = ".bin"


class CaptureError(UserError, ValueError):
    """A capture setting that cannot work."""


@dataclass(frozen=True)
class CaptureConfig:
    directory: Path | None = None  # None: capture is off
    share: float = 0.01  # of the answers that are not "unknown"
    cap_bytes: int = 1 << 30
    retention_s: float = 7 * 24 * 3600
    queue_items: int = 256

    def __post_init__(self):
        if not 0.0 <= self.share <= 1.0:
            raise CaptureError(f"capture share must be between 0 and 1, got {self.share}")
        for name in ("cap_bytes", "retention_s", "queue_items"):
            if getattr(self, name) <= 0:
                raise CaptureError(f"capture {name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Captured:
    image: bytes
    answer: str
    score: float
    unknown: bool
    version: str
    time_ns: int


class Capture:
    """The sampler (request path) and its writer thread; close() drains and stops it."""

    def __init__(self, config: CaptureConfig, seed: int | None = None):
        self.config = config
        self.dropped = 0  # offered, chosen, but the queue was full or the item too large
        self._random = random.Random(seed)
        self._queue: queue.Queue[Captured | None] = queue.Queue(config.queue_items)
        self._kept: list[tuple[int, Path, int]] = []  # (time ns, stem, bytes), oldest first
        self._bytes = 0  # the sum of _kept's sizes: the folder's size
        self._thread = None
        if config.directory is not None:
            config.directory.mkdir(parents=True, exist_ok=True)
            self._kept = sorted(
                (int(image.stem.split("-", 1)[0]), image.with_suffix(""),
                 record.stat().st_size + image.stat().st_size)
                for record, image in whole_captures(config.directory)
            )  # fmt: skip
            self._bytes = sum(size for _, _, size in self._kept)
            self._thread = threading.Thread(target=self._write_all, daemon=True,
                                            name="capture-writer")  # fmt: skip
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def offer(self, image: bytes, answer: str, score: float, unknown: bool, version: str) -> bool:
        """Whether the item was queued; never blocks."""
        if not self.enabled:
            return False
        if not unknown and self._random.random() >= self.config.share:
            return False
        item = Captured(image, answer, float(score), bool(unknown), version, time.time_ns())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        """Writes what is queued, then stops the writer."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            self._write(item)

    def _write(self, item: Captured) -> None:
        record = json.dumps({
            "answer": item.answer, "score": item.score, "unknown": item.unknown,
            "version": item.version, "time_ns": item.time_ns,
        }).encode()  # fmt: skip
        size = len(item.image) + len(record)
        if size > self.config.cap_bytes:
            self.dropped += 1
            return
        self._evict(item.time_ns, room=size)
        stem = self.config.directory / f"{item.time_ns}-{uuid.uuid4().hex[:8]}"
        stem.with_suffix(IMAGE).write_bytes(item.image)
        stem.with_suffix(RECORD).write_bytes(record)  # last: a record means a whole capture
        self._kept.append((item.time_ns, stem, size))
        self._bytes += size

    def _evict(self, now_ns: int, room: int) -> None:
        """Oldest first: what is past retention, then until `room` more bytes fit the cap."""
        oldest_kept = now_ns - int(self.config.retention_s * 1e9)
        while self._kept and (
            self._kept[0][0] < oldest_kept or self._bytes + room > self.config.cap_bytes
        ):
            _, stem, size = self._kept.pop(0)
            stem.with_suffix(RECORD).unlink(missing_ok=True)
            stem.with_suffix(IMAGE).unlink(missing_ok=True)
            self._bytes -= size


def whole_captures(directory: Path):
    """(record, image) of every whole capture in `directory`: a record and its image (an
    interrupted write leaves an image alone, which is not one)."""
    for record in directory.glob(f"*{RECORD}"):
        image = record.with_suffix(IMAGE)
        if image.exists():
            yield record, image


def captured(directory: Path) -> list[tuple[dict, Path]]:
    """Every whole capture in `directory`, oldest first: (record, image path)."""
    found = [(json.loads(r.read_text()), image) for r, image in whole_captures(directory)]
    return sorted(found, key=lambda pair: pair[0]["time_ns"])
