"""The metrics the Python models export (serving/model_metrics.py), read from the live
server's metrics port before and after known traffic: answers per class, the top-1
score, "unknown" answers and the calibrated rate they are judged by, decode time per
image, and refused inputs by reason. The warm-up requests Triton sends at load count
in none of them."""

import io
import re
import shutil
import time
import urllib.request
from collections import Counter

import pytest
from conftest import NAMES, OUTSIDE, PHOTOS, served
from PIL import Image

from resnet_triton.client import Classifier, ClientError
from resnet_triton.preprocess import REJECT_REASONS

pytestmark = pytest.mark.integration

# serving/model_metrics.py sends every second: a count is polled for until it arrives,
# for at most this long (a machine busy with other tests can delay a flush).
ARRIVAL_S = 30.0
SERIES = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """Every resnet_triton_* and nv_inference_count sample: (name, labels, value)."""
    text = urllib.request.urlopen(f"http://localhost:{port}/metrics").read().decode()
    samples = []
    for line in text.splitlines():
        match = SERIES.match(line)
        if match and match[1].startswith(("resnet_triton_", "nv_inference_count")):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            samples.append((match[1], labels, float(match[3])))
    return samples


def scrape_until(port: int, reached, timeout_s: float = ARRIVAL_S):
    """The first scrape where `reached(samples)` holds, or the last one when timeout_s
    has passed (the caller's assertions then say what is missing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(port)
        if reached(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def total(samples, name: str, **labels) -> float:
    return sum(v for n, ls, v in samples if n == name and labels.items() <= ls.items())


def tiff() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(out, "TIFF")
    return out.getvalue()


def test_the_models_count_what_they_answered_and_refused(calibrated, calibrated_server, digits):
    _, report = calibrated
    server, _ = calibrated_server
    port = server.ports.metrics
    before = scrape(port)
    images = OUTSIDE + sorted((digits / "val").rglob("*.png"))[::5]
    refused = {  # reason -> (an input refused for it, sent alone; what the error says)
        "empty": (b"", "empty image payload"),
        "not_an_image": (b"plain text, not an image", "not a decodable image"),
        "corrupt": (PHOTOS[0].read_bytes()[:2000], "corrupt"),
        "format": (tiff(), "image format TIFF is not accepted"),
    }
    with Classifier(f"localhost:{server.ports.grpc}") as client:
        results = client.classify(images, top_k=1)
        for data, message in refused.values():
            with pytest.raises(ClientError, match=message):
                client.classify_bytes([data])

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    counts = {  # what the models will have sent, once their next flushes are in
        "resnet_triton_answers_total": len(images),
        "resnet_triton_top1_score_count": len(images),
        "resnet_triton_preprocess_seconds_count": len(images),
        "resnet_triton_rejected_inputs_total": len(refused),
    }
    after = scrape_until(
        port, lambda now: all(total(now, n) - total(before, n) >= c for n, c in counts.items())
    )
    assert {name: delta(name) for name in counts} == counts

    assert all(r.ok for r in results)
    answers = Counter(r.top1.label for r in results)
    for label in {ls["class"] for n, ls, _ in after if n == "resnet_triton_answers_total"}:
        assert delta("resnet_triton_answers_total", **{"class": label}) == answers[label], label
    assert delta("resnet_triton_answers_total") == len(images)
    assert delta("resnet_triton_unknown_answers_total") == sum(r.unknown for r in results) > 0
    assert delta("resnet_triton_top1_score_count") == len(images)
    assert delta("resnet_triton_top1_score_sum") == pytest.approx(
        sum(r.top1.score for r in results), rel=1e-5
    )
    assert total(after, "resnet_triton_calibrated_unknown_ratio") == pytest.approx(
        report["val_frr"]
    )
    assert delta("resnet_triton_preprocess_seconds_count") == len(images)
    assert 0 < delta("resnet_triton_preprocess_seconds_sum") < len(images)  # under 1 s each
    for reason in REJECT_REASONS:
        assert delta("resnet_triton_rejected_inputs_total", reason=reason) == (reason in refused), (
            reason
        )
    # Warm-up is not traffic: every answer counted since the start is an image a client
    # sent through the ensemble (which has no warm-up); Triton's count for the classifier
    # holds its warm-up samples too (a batch of 1 and one of 32 zero images).
    answered = total(after, "resnet_triton_answers_total")
    assert answered == total(after, "nv_inference_count", model=NAMES.ensemble)
    assert total(after, "nv_inference_count", model=NAMES.classifier) - answered == 1 + 32


def test_a_metrics_error_is_logged_once_and_every_request_is_answered(repository, digits, tmp_path):
    """A labels file shorter than the model's classes breaks the answers' metrics; the
    answers themselves, batched or not, are the same as with the whole file."""
    repo = tmp_path / "model_repository"
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("__pycache__"))
    labels = repo / NAMES.classifier / "labels.txt"
    labels.write_text("\n".join(labels.read_text().splitlines()[:-2]) + "\n")
    images = sorted((digits / "val").rglob("*.png"))[::9]
    with served(repo, tmp_path) as server, Classifier(f"localhost:{server.ports.grpc}") as client:
        batched = client.classify(images, top_k=1)
        alone = [client.classify([image], top_k=1)[0] for image in images[:4]]
    assert all(r.ok for r in batched + alone), [r.error for r in batched + alone if not r.ok]
    assert [r.top1.index for r in alone] == [r.top1.index for r in batched[:4]]
    failures = re.findall(
        r"classifier: metrics update answered failed.*", server.log_path.read_text()
    )
    assert len(failures) == 1, failures
    assert "the scores have 10 classes and the labels file 8 labels" in failures[0]
