"""`resnet-triton compare` (pipeline/compare.py, compare_report.py): two store versions
replayed on captured traffic by the real server, and the report's figures."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from conftest import SKLEARN_IMAGES
from PIL import Image
from scipy.stats import binomtest

from resnet_triton import cli
from resnet_triton.build.export import spec_from_onnx
from resnet_triton.pipeline.compare_report import (
    Answer,
    Comparison,
    confusion,
    markdown,
    picture,
    wilson,
)
from resnet_triton.pipeline.store import keep_version
from resnet_triton.serving.capture import LABELS_LOG, NOT_OURS, Capture, CaptureConfig, captured
from resnet_triton.serving.repository import DEFAULT_ENV_PATH, render

SWAP = {"0": "1", "1": "0"}  # version 2 is version 1 with these two labels exchanged
CORRUPT = b"\x89PNG\r\n\x1a\nnot an image at all"


def capture_images(folder, images: list[bytes]) -> dict[bytes, str]:
    """The images captured as serving would (every one: share 1.0); bytes -> capture id."""
    capture = Capture(CaptureConfig(folder, share=1.0))
    for image in images:
        assert capture.offer(image, "3", 0.9, unknown=False, version="1")
    capture.close()
    return {path.read_bytes(): record["capture"] for record, path in captured(folder)}


def write_labels(folder, labels: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LABELS_LOG).write_text("".join(
        json.dumps({"capture": i, "label": label, "by": "tester", "time": "2026-12-08T10:00:00"})
        + "\n" for i, label in labels.items()
    ))  # fmt: skip


# The report's figures, without a server.


def test_wilson_interval_matches_scipy_and_stays_in_bounds():
    for successes, trials in ((0, 10), (5, 10), (10, 10), (17, 20), (1, 3)):
        expected = binomtest(successes, trials).proportion_ci(method="wilson")
        assert wilson(successes, trials) == pytest.approx((expected.low, expected.high), abs=1e-9)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # the textbook case
    assert wilson(0, 0) is None


def test_confusion_counts_unknown_and_error_as_answers_of_their_own():
    a = ["0", "1", "unknown", "error", "0", "0"]
    b = ["1", "1", "0", "error", "unknown", "1"]
    assert confusion(a, b) == (
        ["0", "1", "unknown", "error"],
        [[0, 2, 1, 0],  # A said 0: B said 1 twice, unknown once
         [0, 1, 0, 0],
         [1, 0, 0, 0],
         [0, 0, 0, 1]],
    )  # fmt: skip


def synthetic(tmp_path) -> Comparison:
    """Six captures, two versions, four reviewed: figures known by hand."""
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(png, format="PNG")
    images = []
    for n, data in enumerate([png.getvalue()] * 5 + [b"junk"]):
        images.append(tmp_path / f"{n}.bin")
        images[-1].write_bytes(data)
    a = [
        Answer("cat", 0.9, False, None, 10),
        Answer("cat", 0.8, False, None, 20),
        Answer("dog", 0.3, True, None, 30),
        Answer("dog", 0.7, False, None, 40),
        Answer("cat", 0.6, False, None, 50),
        Answer(None, None, False, "bad bytes", 60),
    ]
    b = [Answer("cat", 0.95, False, None, 5), Answer("dog", 0.5, False, None, 5),
         Answer("dog", 0.2, True, None, 5), Answer("dog", 0.9, False, None, 5),
         Answer("cat", 0.2, True, None, 5), Answer("cat", 0.4, False, None, 5)]  # fmt: skip
    ids = [f"c{n}" for n in range(6)]
    labels = {"c0": "cat", "c1": "dog", "c2": NOT_OURS, "c4": NOT_OURS}
    return Comparison(["3", "4"], ids, {"3": a, "4": b}, labels, images)


def test_the_report_figures_of_a_known_comparison(tmp_path):
    comparison = synthetic(tmp_path)
    assert comparison.agree == [True, False, True, True, False, False]
    assert comparison.disagreements == ["c1", "c4", "c5"]
    summary = comparison.summary()
    assert (summary["captures"], summary["agreements"], summary["agreement"]) == (6, 3, 0.5)
    assert summary["confusion"] == {
        "answers": ["cat", "dog", "unknown", "error"],
        "counts": [[1, 1, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]],
    }
    three, four = summary["per_version"]["3"], summary["per_version"]["4"]
    assert (three["answered"], three["errors"], three["unknown"]) == (5, 1, 1)
    assert three["unknown_rate"] == pytest.approx(0.2)
    assert three["mean_score"] == pytest.approx((0.9 + 0.8 + 0.3 + 0.7 + 0.6) / 5)
    assert three["latency_ms"] == {"p50": 35.0, "p95": pytest.approx(57.5)}
    assert three["answers"] == {"cat": 3, "unknown": 1, "dog": 1, "error": 1}
    assert four["answers"] == {"cat": 2, "dog": 2, "unknown": 2}
    # Reviewed: c0 cat, c1 dog (ours); c2 and c4 not ours.
    assert three["accuracy"] | {"ci95": None} == {
        "successes": 1, "trials": 2, "rate": 0.5, "ci95": None
    }  # fmt: skip
    assert four["accuracy"]["successes"] == 2
    assert four["accuracy"]["ci95"] == pytest.approx(wilson(2, 2), abs=1e-4)
    assert (three["not_ours_unknown"]["successes"], four["not_ours_unknown"]["successes"]) == (1, 2)
    text = markdown(comparison)
    assert (
        "**version 3 vs version 4: 3 of 6 captures answered alike (50.0%), 3 disagreements**"
        in text
    )
    assert "| v3 \\ v4 | cat | dog | unknown | error |" in text
    assert "| accuracy on reviewed images of our classes | 1/2 = 50.0% (95% CI" in text
    assert "| dog | 1 | 2 | +1 |" in text and "| error | 1 | 0 | -1 |" in text
    assert "- version 3, capture c5: bad bytes" in text
    # The picture leaves out the bytes Pillow cannot open (c5): two of three shown.
    assert picture(comparison, tmp_path / "d.png") == 2
    assert Image.open(tmp_path / "d.png").format == "PNG"


# Refusals, before any server starts.


@pytest.fixture
def small_store(tmp_path):
    """A store keeping versions 1 and 2 of a repository that holds only labels."""
    store = tmp_path / "store"
    labels = store / "cpu" / "ensemble" / "labels.txt"
    labels.parent.mkdir(parents=True)
    labels.write_text("cat\ndog\n")
    keep_version(store, "cpu", {})
    keep_version(store, "cpu", {})
    return store


def refusal(capsys, *argv) -> str:
    assert cli.main(["compare", *argv]) == 1
    return capsys.readouterr().err.strip()


def test_what_cannot_be_compared_is_refused_in_one_line(small_store, tmp_path, capsys):
    empty = tmp_path / "capture"
    empty.mkdir()
    base = ["--store", str(small_store), "--captured", str(empty)]
    assert refusal(capsys, "--versions", "1", "7", *base) == (
        f"error: version 7 of cpu is not in the store {small_store}; published: 1, 2"
    )
    assert refusal(capsys, "--versions", "2", "latest", *base) == (
        "error: --versions 2 latest name the same version 2 twice; compare two of 1, 2"
    )
    assert refusal(capsys, "--versions", "1", "2", *base, "--repository", "gpu").startswith(
        f"error: the model store {small_store} keeps no version of repository 'gpu'"
    )
    assert refusal(capsys, "--versions", "1", "2", *base).startswith(
        f"error: the capture folder {empty} holds no capture"
    )
    ids = capture_images(empty, [b"a", b"b"])
    binary = tmp_path / "tritonserver"
    assert refusal(capsys, "--versions", "1", "2", *base, "--tritonserver", str(binary)) == (
        f"error: --tritonserver {binary} is not an executable file"
    )
    labelled = tmp_path / "labelled"
    write_labels(labelled, {ids[b"a"]: "cat", ids[b"b"]: "horse"})
    assert refusal(capsys, "--versions", "1", "2", *base, "--labelled", str(labelled)) == (
        f"error: {labelled / LABELS_LOG} labels captures as 'horse', which the compared "
        f"versions do not have; their classes: cat, dog (or '{NOT_OURS}')"
    )


# The real thing: two versions served one after the other.


@pytest.fixture(scope="module")
def swapped_store(repository, tmp_path_factory):
    """Version 1: the session's model; version 2: the same, with labels 0 and 1 exchanged,
    so that it answers 1 where version 1 answers 0 and the reverse, and alike elsewhere.
    Rendered for the serving image's environment, as a store's repositories are."""
    store = tmp_path_factory.mktemp("compare-store")
    for swap in (False, True):
        latest = store / "cpu"
        shutil.rmtree(latest, ignore_errors=True)
        shutil.copytree(repository, latest, ignore=shutil.ignore_patterns("__pycache__"))
        (model,) = latest.glob("classifier/1/model.onnx")
        render(spec_from_onnx(model), latest, DEFAULT_ENV_PATH)
        for labels in latest.glob("*/labels.txt") if swap else ():
            names = labels.read_text().splitlines()
            labels.write_text("".join(f"{SWAP.get(n, n)}\n" for n in names))
        keep_version(store, "cpu", {"swapped": swap})
    return store


def test_two_versions_compared_on_captured_traffic(swapped_store, digits, tmp_path, capsys):
    truth = {}  # the captured bytes -> their true class, or NOT_OURS
    for folder in sorted((digits / "val").iterdir()):
        for image in sorted(folder.iterdir())[:2]:
            truth[image.read_bytes()] = folder.name
    unreviewed = image.read_bytes()  # a 9, left out of the review
    truth[(SKLEARN_IMAGES / "china.jpg").read_bytes()] = NOT_OURS
    ids = capture_images(tmp_path / "capture", [*truth, CORRUPT])
    assert len(ids) == 22
    reviewed = {ids[data]: label for data, label in truth.items() if data != unreviewed}
    write_labels(tmp_path / "labelled", reviewed)
    out = tmp_path / "report"
    assert cli.main([
        "compare", "--versions", "1", "2", "--store", str(swapped_store), "--captured",
        str(tmp_path / "capture"), "--labelled", str(tmp_path / "labelled"), "--out", str(out),
    ]) == 0  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["versions"] == ["1", "2"]
    by_id = {c["capture"]: c for c in report["captures"]}
    assert sorted(by_id) == sorted(ids.values())

    # The corrupt bytes: an error for each version, counted, and the comparison went on.
    corrupt = by_id[ids[CORRUPT]]["answers"]
    assert corrupt["1"]["error"] and corrupt["2"]["error"] and corrupt["1"]["label"] is None
    # Every answered image: version 2 says what version 1 says, 0 and 1 exchanged.
    first = {i: c["answers"]["1"]["label"] or "error" for i, c in by_id.items()}
    for i, c in by_id.items():
        assert (c["answers"]["2"]["label"] or "error") == SWAP.get(first[i], first[i])
        assert c["answers"]["2"]["score"] == pytest.approx(c["answers"]["1"]["score"])
        assert c["agree"] == (first[i] not in SWAP)
    changed = sorted(i for i in by_id if first[i] in SWAP)
    assert sorted(report["disagreements"]) == changed
    # Version 1 is the gated model: the reviewed digits it mostly gets right, 0s and 1s
    # among them, so the versions disagree on some captures and agree on the rest.
    digits_reviewed = {ids[d]: t for d, t in truth.items() if t != NOT_OURS and d != unreviewed}
    right = [i for i, t in digits_reviewed.items() if first[i] == t]
    assert len(right) >= 15 and 0 < len(changed) < 22

    summary = report["summary"]
    assert (summary["captures"], summary["agreements"]) == (22, 22 - len(changed))
    answers = summary["confusion"]["answers"]
    for a, row in zip(answers, summary["confusion"]["counts"], strict=True):
        for b, count in zip(answers, row, strict=True):
            expected = sum(first[i] == a for i in by_id) if b == SWAP.get(a, a) else 0
            assert count == expected, (a, b)
    one, two = summary["per_version"]["1"], summary["per_version"]["2"]
    assert (one["errors"], two["errors"], one["answered"]) == (1, 1, 21)
    assert one["accuracy"]["trials"] == two["accuracy"]["trials"] == len(digits_reviewed)
    assert one["accuracy"]["successes"] == len(right)
    assert two["accuracy"]["successes"] == sum(
        SWAP.get(first[i], first[i]) == t for i, t in digits_reviewed.items()
    )
    assert one["accuracy"]["ci95"] == pytest.approx(
        wilson(len(right), len(digits_reviewed)), abs=1e-4
    )
    # Not calibrated: neither version answers "unknown", to the photo either.
    assert one["not_ours_unknown"] | two["not_ours_unknown"] == {
        "successes": 0, "trials": 1, "rate": 0.0, "ci95": pytest.approx(wilson(0, 1), abs=1e-4)
    }  # fmt: skip
    assert capsys.readouterr().out.splitlines()[-2] == (
        f"version 1 vs version 2: {22 - len(changed)} of 22 captures answered alike "
        f"({(22 - len(changed)) / 22:.1%}), {len(changed)} disagreements"
    )
    assert (
        "## Answers: version 1 (rows) against version 2 (columns)"
        in (out / "report.md").read_text()
    )
    assert Image.open(out / "disagreements.png").format == "PNG"
