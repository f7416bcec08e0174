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

Switched on for a server by its environment (`from_environment`: the compose files and
the chart set it, `resnet-triton serve --capture DIR` too), so that capturing never
changes the repository a model version is served from.

Layout: <dir>/<writer>/<time ns>-<id>.bin and .json, one <writer> folder per model
instance (host and instance name), each with an even share of the cap; the stem
"<time ns>-<id>" is the capture's id. A capture stays on the host that served it (the
container's volume, the chart's): nothing here sends it anywhere.

Review (the web page's review view) records labels in <labelled>/labels.jsonl, one JSON
line per decision: {"capture": id, "label": class or NOT_OURS, "by": who, "time": ISO
8601}; the latest line for a capture wins (`labels_of`).
"""

from __future__ import annotations

import json
import math
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


# The server's environment switches capture on: a folder, and optionally the rest.
DIR_ENV = "RESNET_TRITON_CAPTURE_DIR"
SHARE_ENV = "RESNET_TRITON_CAPTURE_SHARE"
MAX_MB_ENV = "RESNET_TRITON_CAPTURE_MAX_MB"  # the whole folder's cap, every writer's together
RETENTION_ENV = "RESNET_TRITON_CAPTURE_RETENTION_HOURS"
DEFAULT_MAX_MB = 1024.0
DEFAULT_RETENTION_HOURS = 7 * 24.0


def _number(environ, name: str, default: float, least: float, most: float) -> float:
    text = environ.get(name, "").strip()
    try:
        value = float(text) if text else default
    except ValueError:
        value = math.nan
    if not least <= value <= most:  # NaN fails too
        raise CaptureError(f"{name} must be a number in {least:g}..{most:g}, got {text!r}")
    return value


def from_environment(environ, writer: str = "", writers: int = 1) -> CaptureConfig:
    """The capture one of a server's `writers` (model instances) keeps: off unless
    DIR_ENV names a folder; then in <folder>/<writer>, with 1/writers of the cap."""
    folder = environ.get(DIR_ENV, "").strip()
    share = _number(environ, SHARE_ENV, CaptureConfig.share, 0.0, 1.0)
    max_mb = _number(environ, MAX_MB_ENV, DEFAULT_MAX_MB, 1e-3, math.inf)
    hours = _number(environ, RETENTION_ENV, DEFAULT_RETENTION_HOURS, 1e-3, math.inf)
    if not folder:
        return CaptureConfig()
    if not Path(folder).is_absolute():
        raise CaptureError(f"{DIR_ENV} must be an absolute path, got {folder!r}")
    return CaptureConfig(
        Path(folder) / writer, share, cap_bytes=max(int(max_mb * 2**20 / writers), 1),
        retention_s=hours * 3600,
    )  # fmt: skip


def environment(folder: Path | None, share: float | None = None,
                max_mb: float | None = None) -> dict[str, str]:  # fmt: skip
    """The variables that switch a server's capture on (`folder`) with these settings."""
    if folder is None:
        return {}
    values = {DIR_ENV: str(Path(folder).resolve()), SHARE_ENV: share, MAX_MB_ENV: max_mb}
    return {name: str(value) for name, value in values.items() if value is not None}


def describe(config: CaptureConfig) -> str:
    """One line for a server's banner: whether and how it captures."""
    if config.directory is None:
        return f"capture: off (${DIR_ENV} or serve --capture DIR switches it on)"
    return (
        f"capture: on, in {config.directory} (every unknown answer, {config.share:.1%} of "
        f"the rest; at most {config.cap_bytes / 2**20:g} MiB, kept "
        f"{config.retention_s / 3600:g} h)"
    )


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


class AnswerCapture:
    """What a serving model instance offers its Capture: each answered image's bytes with
    the top-1 label and score, "unknown" when that score is below `reject_below`. The
    `probe` image (the health probe's and warm-up's photo, sent every few seconds) is not
    traffic and never kept."""

    def __init__(self, config: CaptureConfig, labels: list[str], version: str,
                 reject_below: float | None, probe: bytes = b""):  # fmt: skip
        self.capture = Capture(config)
        self.labels, self.version, self.reject_below = labels, version, reject_below
        self.probe = probe

    @property
    def enabled(self) -> bool:
        return self.capture.enabled

    @property
    def dropped(self) -> int:
        return self.capture.dropped

    def offer(self, images, scores) -> None:
        """`images`: a request's encoded images (bytes, n); `scores`: its (n, classes)."""
        for image, row in zip(images, scores, strict=True):
            if image == self.probe:
                continue
            top = int(row.argmax())
            score = float(row[top])
            unknown = self.reject_below is not None and score < self.reject_below
            self.capture.offer(bytes(image), self.labels[top], score, unknown, self.version)

    def close(self) -> None:
        self.capture.close()


def whole_captures(directory: Path):
    """(record, image) of every whole capture under `directory`, in any writer's folder: a
    record and its image (an interrupted write leaves an image alone, which is not one)."""
    for record in directory.rglob(f"*{RECORD}"):
        image = record.with_suffix(IMAGE)
        if image.exists():
            yield record, image


def captured(directory: Path) -> list[tuple[dict, Path]]:
    """Every whole capture under `directory`, oldest first: (record, image path); each
    record also carries its "capture" id (the files' stem)."""
    if not directory.is_dir():
        raise CaptureError(f"no capture folder {directory}")
    found = [
        ({**json.loads(r.read_text()), "capture": r.stem}, image)
        for r, image in whole_captures(directory)
    ]
    return sorted(found, key=lambda pair: (pair[0]["time_ns"], pair[0]["capture"]))


LABELS_LOG = "labels.jsonl"
NOT_OURS = "not-ours"  # the review's label for an image of none of the model's classes


def labels_of(labelled: Path) -> dict[str, dict]:
    """Each reviewed capture's latest decision in <labelled>/labels.jsonl, by capture id."""
    log = labelled / LABELS_LOG
    if not log.is_file():
        return {}
    decisions = {}
    for number, line in enumerate(log.read_text().splitlines(), 1):
        try:
            decision = json.loads(line)
            decisions[decision["capture"]] = decision
        except (ValueError, KeyError, TypeError) as exc:
            raise CaptureError(f"{log} line {number} is not a review decision: {exc}") from None
    return decisions
