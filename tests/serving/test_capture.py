"""The capture store (serving/capture.py): what it keeps, and its bounds under a flood."""

import contextlib
import json
import os
import re
import threading

import numpy as np
import pytest

from resnet_triton.serving import capture
from resnet_triton.serving.capture import Capture, CaptureConfig, CaptureError, captured


def folder_bytes(directory) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def test_off_by_default_keeps_nothing(tmp_path):
    capture = Capture(CaptureConfig())
    assert not capture.enabled
    assert capture.offer(b"x", "cat", 0.9, unknown=True, version="1") is False
    capture.close()


def test_every_unknown_and_a_share_of_the_rest(tmp_path):
    capture = Capture(CaptureConfig(tmp_path, share=0.25), seed=0)
    for i in range(400):
        capture.offer(b"img%d" % i, "cat", 0.9, unknown=False, version="3")
    for i in range(10):
        capture.offer(b"odd%d" % i, "dog", 0.1, unknown=True, version="3")
    capture.close()
    kept = captured(tmp_path)
    unknown = [record for record, _ in kept if record["unknown"]]
    known = [record for record, _ in kept if not record["unknown"]]
    assert len(unknown) == 10  # every one
    assert 70 <= len(known) <= 130  # a quarter of 400, give or take sampling
    record, image = kept[-1]
    assert record == {"answer": "dog", "score": 0.1, "unknown": True, "version": "3",
                      "time_ns": record["time_ns"], "capture": image.stem}  # fmt: skip
    assert image.read_bytes() == b"odd9"
    assert (
        Capture(CaptureConfig(tmp_path / "none", share=0.0)).offer(b"x", "cat", 0.9, False, "3")
        is False
    )


def test_the_cap_holds_under_a_flood_oldest_first(tmp_path):
    cap = 64 * 1024
    capture = Capture(CaptureConfig(tmp_path, share=1.0, cap_bytes=cap, queue_items=64))
    biggest = 0
    stop = threading.Event()

    def watch():
        nonlocal biggest
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):  # evicted while being counted
                biggest = max(biggest, folder_bytes(tmp_path))

    watcher = threading.Thread(target=watch)
    watcher.start()
    offered = sum(capture.offer(os.urandom(1000), "cat", 0.9, False, "1") for _ in range(5000))
    capture.close()
    stop.set()
    watcher.join()
    assert offered + capture.dropped == 5000
    assert biggest <= cap and folder_bytes(tmp_path) <= cap
    kept = captured(tmp_path)
    assert 40 <= len(kept) <= 64  # about cap / 1.1 KB: the newest ones
    times = [record["time_ns"] for record, _ in kept]
    assert times == sorted(times) and len(set(times)) == len(times)
    too_big = Capture(CaptureConfig(tmp_path / "big", share=1.0, cap_bytes=100))
    too_big.offer(b"x" * 200, "cat", 0.9, False, "1")
    too_big.close()
    assert too_big.dropped == 1 and captured(tmp_path / "big") == []


def test_a_stuck_disk_never_holds_the_request_path(tmp_path, monkeypatch):
    capture = Capture(CaptureConfig(tmp_path, share=1.0, queue_items=8))
    write, writing, disk = capture._write, threading.Event(), threading.Event()

    def stuck_write(item):
        writing.set()
        disk.wait()  # a disk that does not answer until the test says so
        write(item)

    monkeypatch.setattr(capture, "_write", stuck_write)
    assert capture.offer(b"first", "cat", 0.9, False, "1")
    writing.wait()  # the writer holds the first item
    offered = [capture.offer(b"x" * 100, "cat", 0.9, False, "1") for _ in range(200)]
    # Every offer returned at once: 8 queued behind the stuck write, the rest dropped.
    assert (offered.count(True), capture.dropped) == (8, 192)
    disk.set()
    capture.close()
    assert len(captured(tmp_path)) == 9


def test_retention_and_what_a_restart_finds(tmp_path):
    capture = Capture(CaptureConfig(tmp_path, share=1.0))
    capture.offer(b"old", "cat", 0.9, False, "1")
    capture.close()
    assert len(captured(tmp_path)) == 1
    (tmp_path / "123-partial.bin").write_bytes(b"no record")  # an interrupted write
    later = Capture(CaptureConfig(tmp_path, share=1.0, retention_s=1e-9))
    later.offer(b"new", "dog", 0.8, False, "2")
    later.close()
    assert [image.read_bytes() for _, image in captured(tmp_path)] == [b"new"]


@pytest.mark.parametrize(
    "field, value, message",
    [("share", 1.5, "capture share must be between 0 and 1, got 1.5"),
     ("cap_bytes", 0, "capture cap_bytes must be > 0, got 0"),
     ("retention_s", -1, "capture retention_s must be > 0, got -1")],
)  # fmt: skip
def test_bad_settings_are_named(tmp_path, field, value, message):
    with pytest.raises(CaptureError, match=message):
        CaptureConfig(tmp_path, **{field: value})


@pytest.mark.parametrize(
    "environ, message",
    [
        ({capture.DIR_ENV: "captures"}, "RESNET_TRITON_CAPTURE_DIR must be an absolute path"),
        ({capture.SHARE_ENV: "1.5"}, "CAPTURE_SHARE must be a number in 0..1, got '1.5'"),
        ({capture.SHARE_ENV: "nan"}, "CAPTURE_SHARE must be a number in 0..1, got 'nan'"),
        ({capture.MAX_MB_ENV: "lots"}, "CAPTURE_MAX_MB must be a number in 0.001..inf, got"),
        ({capture.RETENTION_ENV: "0"}, "RESNET_TRITON_CAPTURE_RETENTION_HOURS must be a number"),
    ],
)  # fmt: skip
def test_a_bad_setting_fails_naming_its_variable(environ, message):
    with pytest.raises(CaptureError, match=re.escape(message)):
        capture.from_environment(environ)


def test_the_environment_switches_it_on_and_splits_the_cap_between_writers(tmp_path):
    assert capture.from_environment({}) == CaptureConfig()  # off
    assert "capture: off" in capture.describe(capture.from_environment({}))
    environ = capture.environment(tmp_path, share=0.5, max_mb=3)
    assert environ == {capture.DIR_ENV: str(tmp_path), capture.SHARE_ENV: "0.5",
                       capture.MAX_MB_ENV: "3"}  # fmt: skip
    config = capture.from_environment(environ, "host-classifier_0_1", writers=3)
    assert config == CaptureConfig(tmp_path / "host-classifier_0_1", share=0.5,
                                   cap_bytes=2**20, retention_s=7 * 24 * 3600)  # fmt: skip
    assert capture.describe(config) == (
        f"capture: on, in {tmp_path}/host-classifier_0_1 (every unknown answer, 50.0% of the "
        "rest; at most 1 MiB, kept 168 h)"
    )


def test_answers_are_kept_with_their_top_label_and_the_probe_never(tmp_path):
    answers = capture.AnswerCapture(CaptureConfig(tmp_path, share=0.0), ["cat", "dog"], "4",
                                    reject_below=0.7, probe=b"probe photo")  # fmt: skip
    scores = np.array([[0.9, 0.1], [0.35, 0.65], [0.2, 0.8], [0.5, 0.5]], np.float32)
    answers.offer(np.array([b"sure", b"unsure", b"sure dog", b"probe photo"], object), scores)
    answers.close()
    kept = [(record["answer"], record["unknown"], record["version"], image.read_bytes())
            for record, image in captured(tmp_path)]  # fmt: skip
    assert kept == [("dog", True, "4", b"unsure")]  # the probe's 0.5 is below 0.7 too
    assert captured(tmp_path)[0][0]["score"] == pytest.approx(0.65)
    with pytest.raises(CaptureError, match="no capture folder"):
        captured(tmp_path / "missing")


def test_review_labels_latest_decision_wins_and_a_bad_line_is_named(tmp_path):
    assert capture.labels_of(tmp_path) == {}
    log = tmp_path / capture.LABELS_LOG
    lines = [{"capture": "1-a", "label": "cat", "by": "ann", "time": "t1"},
             {"capture": "2-b", "label": capture.NOT_OURS, "by": "bo", "time": "t2"},
             {"capture": "1-a", "label": "dog", "by": "bo", "time": "t3"}]  # fmt: skip
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    decisions = capture.labels_of(tmp_path)
    assert {k: v["label"] for k, v in decisions.items()} == {"1-a": "dog", "2-b": "not-ours"}
    log.write_text(log.read_text() + "{not json\n")
    with pytest.raises(CaptureError, match="labels.jsonl line 4 is not a review decision"):
        capture.labels_of(tmp_path)
