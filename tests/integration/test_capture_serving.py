"""Capture of live traffic on the real server (serving/capture.py, wired in
serving/triton_models.py): both layouts (the ensemble rendered with serving.capture),
switched on by the server's environment.

The calibrated digits model answers "unknown" for some photos and digits, so what is kept
at share 0 is exactly what the client was told was unknown; the health probe's photo and
a client's pixels sent straight to the classifier are never kept; a flood never takes the
folder past its cap.
"""

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import NAMES, OUTSIDE, rerendered, served

from resnet_triton.client import Classifier
from resnet_triton.serving import capture
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.probe import warmup_image
from resnet_triton.serving.repository import read_config

pytestmark = pytest.mark.integration


def capturing(repo: Path, root: Path, folder: Path, **settings):
    """The server on `repo` capturing into `folder`; stopping it writes what is queued."""
    return served(repo, root, capture.environment(folder, **settings))


def digit_images(digits: Path, count: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((digits / "val").glob("*/*.png"))[:count]]


def test_ensemble_keeps_every_unknown_answer_and_nothing_else_at_share_0(
    calibrated_server, digits, tmp_path
):
    _, published = calibrated_server
    repo = rerendered(published, tmp_path, ServingConfig(capture=True))
    images = digit_images(digits, 40) + [p.read_bytes() for p in OUTSIDE]
    folder = tmp_path / "captures"
    with capturing(repo, tmp_path, folder, share=0.0) as server:
        with Classifier(f"{server.host}:{server.ports.grpc}", "grpc") as client:
            results = client.classify([*images, b"not an image", warmup_image()])
        # A client of the classifier alone sends pixels, and no image to keep.
        shape = list(read_config(repo / NAMES.classifier / "config.pbtxt").input[0].dims)
        pixels = httpclient.InferInput(NAMES.pixels, [1, *shape], "UINT8")
        pixels.set_data_from_numpy(np.full([1, *shape], 255, np.uint8))
        http = httpclient.InferenceServerClient(f"{server.host}:{server.ports.http}")
        assert http.infer(NAMES.classifier, [pixels]).as_numpy(NAMES.scores).shape[0] == 1
        http.close()
    *answered, bad, probe = results
    assert not bad.ok and probe.ok
    unknown = [(image, r) for image, r in zip(images, answered, strict=True) if r.unknown]
    assert 5 <= len(unknown) < len(images)  # the rule is tested both ways
    kept = capture.captured(folder)
    assert sorted(path.read_bytes() for _, path in kept) == sorted(i for i, _ in unknown)
    by_image = {image: result for image, result in unknown}
    for record, path in kept:
        result = by_image[path.read_bytes()]
        assert record["answer"] == result.predictions[0].label and record["unknown"] is True
        assert record["score"] == pytest.approx(result.predictions[0].score, abs=1e-6)
        assert record["version"] == "1"
    # One writer folder per classifier instance: <host>-<instance name>.
    writer = f"{os.uname().nodename}-{NAMES.classifier}_0_0"
    assert {path.parent.name for _, path in kept} == {writer}


def test_fused_layout_keeps_the_share_and_holds_the_cap_under_a_flood(
    calibrated_server, digits, tmp_path
):
    _, published = calibrated_server
    repo = rerendered(published, tmp_path, ServingConfig(layout="fused"))
    images = digit_images(digits, 60)
    folder, cap_mb = tmp_path / "captures", 0.02  # 20 KiB: two writers of 10 KiB each
    biggest, stop = 0, threading.Event()

    def watch():
        nonlocal biggest
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):  # evicted while being counted
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                biggest = max(biggest, size)

    with capturing(repo, tmp_path, folder, share=1.0, max_mb=cap_mb) as server:
        watcher = threading.Thread(target=watch)
        watcher.start()
        url = f"{server.host}:{server.ports.grpc}"

        def send(batch: list[bytes]):
            with Classifier(url, "grpc") as client:
                return client.classify(batch)

        with ThreadPoolExecutor(6) as pool:
            rounds = list(pool.map(send, [images] * 6))
    stop.set()
    watcher.join()
    answers = {image: r.predictions[0].label for batch in rounds
               for image, r in zip(images, batch, strict=True)}  # fmt: skip
    assert len(answers) == len(images) and all(r.ok for batch in rounds for r in batch)
    kept = capture.captured(folder)
    cap = int(cap_mb * 2**20)
    folder_size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert biggest <= cap and folder_size <= cap
    assert len(kept) >= 10  # the newest of 360 answers, as many as the cap holds
    host = os.uname().nodename
    assert {path.parent.name for _, path in kept} == {  # one folder per fused instance
        f"{host}-{NAMES.ensemble}_0_{n}" for n in (0, 1)
    }
    for record, path in kept:
        assert record["answer"] == answers[path.read_bytes()]
