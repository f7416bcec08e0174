"""The web page's review of captured traffic: what to label first, and where a decision lands.

The queue: captures that `resnet-triton compare` found the two versions disagreeing on
first (in the report's order), then those answered "unknown" (lowest score first: what
the model was least sure of), then the rest, newest first. Captures already labelled
are left out (and counted as done).

A decision puts the captured image into an ImageFolder that `train --extra` takes:
<labelled>/<class>/<capture id><ext>, or <labelled>/not-ours/ for an image of none of
the classes, the extension from the image's real format (Pillow's), and then appends
one line to <labelled>/labels.jsonl (serving/capture.py documents it): who decided
what, and when. A capture has one file: relabelling it moves the file.

The capture folder is read through `capture.captured` alone; nothing here writes to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from resnet_triton.errors import UserError
from resnet_triton.serving.capture import LABELS_LOG, NOT_OURS, captured, labels_of
from resnet_triton.serving.probe import warmup_image
from resnet_triton.spec import FORMAT_EXTENSIONS

CAPTURE_ID = re.compile(r"^[0-9]+-[0-9a-f]+$")  # "<time ns>-<hex>": never a path
MAX_REVIEWER = 100  # characters of a reviewer's name


class ReviewError(UserError, ValueError):
    """A review input that cannot be used: a report, a label, a reviewer."""


class UnknownCapture(ReviewError):
    """No capture of that id (or no longer: evicted from the capture folder)."""


@dataclass(frozen=True)
class Compared:
    """What the review reads of a compare report (pipeline/compare_report.py's
    report.json): the two versions, each capture's answers, the disagreements."""

    versions: tuple[str, ...]
    answers: dict[str, dict]  # capture id -> {version: {label, score, unknown, error}}
    disagreements: tuple[str, ...]


def read_compared(path: Path) -> Compared:
    """The report's "versions", "captures" and "disagreements"; errors name the file."""
    try:
        report = json.loads(Path(path).read_text())
        versions = tuple(str(v) for v in report["versions"])
        answers = {c["capture"]: dict(c["answers"]) for c in report["captures"]}
        disagreements = tuple(report["disagreements"])
    except OSError as exc:
        raise ReviewError(f"cannot read the compare report {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ReviewError(
            f"{path} is not a compare report (report.json of `resnet-triton compare`): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    unknown = [c for c in disagreements if c not in answers]
    if unknown:
        raise ReviewError(f"{path}: disagreements {unknown[:3]} are not among its captures")
    return Compared(versions, answers, disagreements)


def _doubt(record: dict, answers: dict | None) -> tuple[bool, float]:
    """(answered "unknown" by any answer, the lowest score): how unsure the model was."""
    scores = [record["score"]]
    unknown = bool(record["unknown"])
    for answer in (answers or {}).values():
        unknown = unknown or bool(answer.get("unknown"))
        if answer.get("score") is not None:
            scores.append(answer["score"])
    return unknown, min(scores)


def queue_order(
    records: list[dict], done: set[str], compared: Compared | None = None
) -> list[dict]:
    """`records` (capture.captured's, any order) not in `done`, in review order."""
    answers = compared.answers if compared else {}
    waiting = {r["capture"]: r for r in records if r["capture"] not in done}
    first = [waiting.pop(c) for c in (compared.disagreements if compared else ()) if c in waiting]
    unsure = sorted(
        (r for r in waiting.values() if _doubt(r, answers.get(r["capture"]))[0]),
        key=lambda r: (_doubt(r, answers.get(r["capture"]))[1], r["capture"]),
    )
    rest = [r for r in waiting.values() if not _doubt(r, answers.get(r["capture"]))[0]]
    rest.sort(key=lambda r: (r["time_ns"], r["capture"]), reverse=True)
    return first + unsure + rest


def image_format(image: Path) -> str:
    """The image's real format, as Pillow names it ("JPEG"), whatever its file is called."""
    try:
        with Image.open(image) as opened:
            return opened.format or ""
    except FileNotFoundError:
        raise UnknownCapture(f"{image.name} is gone (evicted from the capture folder?)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ReviewError(f"{image.name}: not an image Pillow can read ({exc})") from None


def image_suffix(image: Path) -> str:
    """The file extension of the image's real format: ".jpg", ".png", ..."""
    name = image_format(image)
    if name in FORMAT_EXTENSIONS:
        return FORMAT_EXTENSIONS[name][0]
    found = [ext for ext, fmt in Image.registered_extensions().items() if fmt == name]
    if not found:
        raise ReviewError(f"{image.name}: Pillow knows no file extension for format {name!r}")
    return sorted(found)[0]


def _write_atomically(target: Path, source: Path) -> None:
    """`source` copied to `target` whole or not at all: a hidden temporary file (no
    ImageFolder lists it) renamed into place."""
    temporary = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def _check_label(label: object) -> str:
    if not isinstance(label, str) or label in ("", ".", "..") or "/" in label or "\0" in label:
        raise ReviewError(f"label {label!r} cannot name a class folder")
    return label


def record_label(labelled: Path, capture_id: str, label: str, by: str, image: Path) -> dict:
    """Put capture `capture_id` (its bytes at `image`) into <labelled>/<label>/ and log
    the decision in labels.jsonl, after the file is in place; returns the logged line."""
    if not CAPTURE_ID.fullmatch(capture_id):
        raise UnknownCapture(f"{capture_id!r} is not a capture id (<time ns>-<hex>)")
    folder = Path(labelled) / _check_label(label)
    target = folder / f"{capture_id}{image_suffix(image)}"
    before = [p for p in Path(labelled).glob(f"*/{capture_id}.*") if p != target]
    folder.mkdir(parents=True, exist_ok=True)
    if before:  # relabelled: the one file moves (a rename, whole at every moment)
        os.replace(before[0], target)
    else:
        _write_atomically(target, image)
    for stale in before[1:]:
        stale.unlink(missing_ok=True)
    decision = {"capture": capture_id, "label": label, "by": by,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds")}  # fmt: skip
    with (Path(labelled) / LABELS_LOG).open("a") as log:
        log.write(json.dumps(decision) + "\n")
    return decision


def check_reviewer(by: object) -> str:
    """A reviewer's name, as the log records it: one line of text."""
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_REVIEWER or "\n" in by:
        raise ReviewError(
            f"reviewer {by!r} must be a name of 1 to {MAX_REVIEWER} characters on one line"
        )
    return by.strip()


class Review:
    """The review of one capture folder into one labelled folder (the page's state)."""

    def __init__(self, captures: Path, labelled: Path, classes: list[str],
                 reviewer: str, compared: Compared | None = None):  # fmt: skip
        self.captures = Path(captures)
        self.labelled = Path(labelled)
        self.classes = list(classes)
        self.reviewer = check_reviewer(reviewer)
        self.compared = compared
        if NOT_OURS in self.classes:
            raise ReviewError(f"the model has a class named {NOT_OURS!r}, the review's own label")
        for label in self.classes:
            _check_label(label)
        self._found: dict[str, tuple[dict, Path]] = {}
        self._lock = threading.Lock()  # one decision at a time: the log and the files
        self.state()  # the folders are readable (CaptureError names one that is not)

    def _scan(self) -> list[dict]:
        found = captured(self.captures)  # re-read: serving keeps adding and evicting
        self._found = {record["capture"]: (record, image) for record, image in found}
        return [record for record, _ in found]

    def state(self) -> dict:
        """The queue and the counts, as the page shows them."""
        records = self._scan()
        done = labels_of(self.labelled)
        queue = [self._item(r) for r in queue_order(records, set(done), self.compared)]
        return {"queue": queue, "done": len(done), "left": len(queue),
                "classes": self.classes, "not_ours": NOT_OURS, "reviewer": self.reviewer,
                "versions": list(self.compared.versions) if self.compared else []}  # fmt: skip

    def _item(self, record: dict) -> dict:
        """One capture as the page shows it: the served answer, and the compared ones."""
        item = {key: record[key] for key in ("capture", "answer", "score", "unknown", "version")}
        if self.compared and record["capture"] in self.compared.answers:
            item["answers"] = self.compared.answers[record["capture"]]
            item["agree"] = record["capture"] not in self.compared.disagreements
        return item

    def image(self, capture_id: str) -> Path:
        """The captured bytes of `capture_id`; UnknownCapture if there are none."""
        if not CAPTURE_ID.fullmatch(capture_id):
            raise UnknownCapture(f"{capture_id!r} is not a capture id (<time ns>-<hex>)")
        if capture_id not in self._found:
            self._scan()  # captured since the page last asked
        if capture_id not in self._found or not self._found[capture_id][1].is_file():
            raise UnknownCapture(f"no capture {capture_id} in {self.captures}")
        return self._found[capture_id][1]

    def media_type(self, image: Path) -> str:
        return Image.MIME.get(image_format(image), "application/octet-stream")

    def decide(self, capture_id: str, label: object, by: object = None) -> dict:
        """Record `label` (a class, or NOT_OURS) for the capture, by `by` or the default
        reviewer; returns the decision with the counts after it."""
        try:
            image = self.image(capture_id)
        except UnknownCapture:  # evicted since it was labelled: relabel the labelled copy
            image = next(iter(self.labelled.glob(f"*/{capture_id}.*")), None)
            if image is None or not CAPTURE_ID.fullmatch(capture_id):
                raise
        if label not in (*self.classes, NOT_OURS):
            raise ReviewError(f"label {label!r} is not one of {[*self.classes, NOT_OURS]}")
        who = self.reviewer if by is None or by == "" else check_reviewer(by)
        with self._lock:
            decision = record_label(self.labelled, capture_id, label, who, image)
        counts = self.state()
        return decision | {"done": counts["done"], "left": counts["left"]}


def served_labels(classifier) -> list[str]:
    """The served model's labels in class order, from the server itself: the health probe's
    photo asked for every class through the classification extension (the client keeps no
    copy of the labels; a capturing server never keeps that photo: serving/capture.py)."""
    count = classifier.info.classes
    if not count:
        raise ReviewError(f"{classifier.model} at {classifier.url} does not say its classes")
    [row] = classifier.classify_bytes([warmup_image()], top_k=count)
    return [p.label for p in sorted(row, key=lambda p: p.index)]
