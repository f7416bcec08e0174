"""The review's queue and records (client/review.py) on a real capture folder, without a
browser or a server: the order, where a decision lands, relabelling, the errors."""

import io
import json
import time

import pytest
from conftest import PHOTOS
from PIL import Image

from resnet_triton.client import ui
from resnet_triton.client.review import (
    Compared,
    Review,
    ReviewError,
    UnknownCapture,
    queue_order,
    read_compared,
    record_label,
)
from resnet_triton.serving.capture import (
    LABELS_LOG,
    NOT_OURS,
    Capture,
    CaptureConfig,
    captured,
    labels_of,
)

CLASSES = [str(d) for d in range(10)]
JPEG = next(p for p in PHOTOS if p.suffix == ".jpg")


def png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (16, 16), shade).save(out, format="PNG")
    return out.getvalue()


def capture_folder(folder, offers) -> list[str]:
    """Captures of `offers` (image, answer, score, unknown), oldest first: their ids."""
    capture = Capture(CaptureConfig(folder, share=1.0))
    for image, answer, score, unknown in offers:
        assert capture.offer(image, answer, score, unknown, version="3")
        time.sleep(0.002)  # distinct times: the order is by time
    capture.close()
    return [record["capture"] for record, _ in captured(folder)]


def compare_report(path, ids: list[str], disagreements: list[str]):
    """A report.json as `resnet-triton compare` writes it (the fields the review reads)."""
    answer = {"label": "1", "score": 0.9, "unknown": False, "error": None, "latency_ms": 1.0}
    captures = [
        {"capture": i, "answers": {"3": answer, "4": {**answer, "label": "7"} if i in
                                   disagreements else answer}, "agree": i not in disagreements}
        for i in ids
    ]  # fmt: skip
    path.write_text(json.dumps({"versions": ["3", "4"], "captures": captures,
                                "disagreements": disagreements}))  # fmt: skip
    return path


@pytest.fixture
def six(tmp_path):
    """Six captures, oldest first: sure, unsure (0.3), sure, unsure (0.1), sure, a JPEG."""
    offers = [(png(10), "1", 0.9, False), (png(20), "2", 0.3, True), (png(30), "3", 0.8, False),
              (png(40), "4", 0.1, True), (png(50), "5", 0.95, False),
              (JPEG.read_bytes(), "6", 0.7, False)]  # fmt: skip
    return tmp_path / "captures", capture_folder(tmp_path / "captures", offers)


def test_disagreements_first_then_unknown_by_score_then_newest(six, tmp_path):
    captures, ids = six
    report = compare_report(tmp_path / "report.json", ids, disagreements=[ids[4]])
    labelled = tmp_path / "labelled"
    images = {record["capture"]: image for record, image in captured(captures)}
    record_label(labelled, ids[5], NOT_OURS, "ada", images[ids[5]])
    review = Review(captures, labelled, CLASSES, "ada", read_compared(report))
    state = review.state()
    assert [item["capture"] for item in state["queue"]] == [ids[4], ids[3], ids[1], ids[2], ids[0]]
    assert (state["done"], state["left"], state["versions"]) == (1, 5, ["3", "4"])
    first = state["queue"][0]
    assert first["answers"]["4"]["label"] == "7" and first["agree"] is False
    assert state["queue"][1]["agree"] is True and state["queue"][1]["unknown"] is True
    # Without a report: the unknown answers first all the same.
    plain = Review(captures, labelled, CLASSES, "ada").state()["queue"]
    assert [item["capture"] for item in plain] == [ids[3], ids[1], ids[4], ids[2], ids[0]]
    assert "answers" not in plain[0]


def test_queue_order_counts_an_unknown_from_either_compared_version():
    records = [{"capture": f"{n}-a", "score": 0.9, "unknown": False, "time_ns": n} for n in (1, 2)]
    answers = {"1-a": {"4": {"label": "3", "score": 0.2, "unknown": True, "error": None}}}
    order = queue_order(records, set(), Compared(("3", "4"), answers, ()))
    assert [r["capture"] for r in order] == ["1-a", "2-a"]  # the unsure one, then newest first
    assert [r["capture"] for r in queue_order(records, set())] == ["2-a", "1-a"]


def test_a_decision_files_the_image_by_its_real_format_and_logs_it(six, tmp_path):
    captures, ids = six
    labelled = tmp_path / "labelled"
    review = Review(captures, labelled, CLASSES, "night-shift")
    decision = review.decide(ids[1], "2", "ada")
    assert (labelled / "2" / f"{ids[1]}.png").read_bytes() == png(20)  # captured as .bin
    assert decision["by"] == "ada" and decision["time"].endswith("+00:00")
    assert (decision["done"], decision["left"]) == (1, 5)
    review.decide(ids[5], NOT_OURS)  # the default reviewer
    assert (labelled / NOT_OURS / f"{ids[5]}.jpg").read_bytes() == JPEG.read_bytes()
    log = [json.loads(line) for line in (labelled / LABELS_LOG).read_text().splitlines()]
    assert [(d["capture"], d["label"], d["by"]) for d in log] == [
        (ids[1], "2", "ada"), (ids[5], NOT_OURS, "night-shift")]  # fmt: skip
    assert not [p for p in labelled.rglob(".*")]  # no temporary file left behind


def test_relabelling_moves_the_one_file(six, tmp_path):
    captures, ids = six
    labelled = tmp_path / "labelled"
    review = Review(captures, labelled, CLASSES, "ada")
    review.decide(ids[0], "1")
    review.decide(ids[0], "7", "bob")
    review.decide(ids[0], "7", "bob")  # the same again: still one file
    assert [p.relative_to(labelled).as_posix() for p in labelled.rglob("*.png")] == [
        f"7/{ids[0]}.png"
    ]
    assert (labelled / "7" / f"{ids[0]}.png").read_bytes() == png(10)
    assert labels_of(labelled)[ids[0]]["label"] == "7"
    assert len((labelled / LABELS_LOG).read_text().splitlines()) == 3
    assert review.state()["done"] == 1
    for path in captures.rglob(f"{ids[0]}.*"):  # evicted from the capture folder since
        path.unlink()
    review.decide(ids[0], NOT_OURS)  # the labelled copy moves all the same
    assert (labelled / NOT_OURS / f"{ids[0]}.png").read_bytes() == png(10)
    assert not (labelled / "7" / f"{ids[0]}.png").exists()
    for path in captures.rglob(f"{ids[1]}.*"):  # evicted and never labelled: gone
        path.unlink()
    with pytest.raises(UnknownCapture, match=f"no capture {ids[1]}"):
        review.decide(ids[1], "1")


def test_bad_ids_labels_and_reviewers_are_named(six, tmp_path):
    captures, ids = six
    labelled = tmp_path / "labelled"
    review = Review(captures, labelled, CLASSES, "ada")
    for bad in ("../../etc/passwd", "12-XYZ", "abc", ""):
        with pytest.raises(UnknownCapture, match="is not a capture id"):
            review.image(bad)
    with pytest.raises(UnknownCapture, match="no capture 123-abc in"):
        review.decide("123-abc", "1")
    with pytest.raises(ReviewError, match=r"label 'cat' is not one of \['0', .*'not-ours'\]"):
        review.decide(ids[0], "cat")
    with pytest.raises(ReviewError, match="reviewer ' ' must be a name"):
        review.decide(ids[0], "1", " ")
    with pytest.raises(ReviewError, match="must be a name"):
        review.decide(ids[0], "1", "a\nb")
    assert not labelled.exists()  # nothing written by a refused decision
    with pytest.raises(ReviewError, match="cannot name a class folder"):
        record_label(labelled, ids[0], "../x", "ada", captured(captures)[0][1])
    with pytest.raises(ReviewError, match="the review's own label"):
        Review(captures, labelled, [*CLASSES, NOT_OURS], "ada")


def test_a_report_that_is_not_one_is_named(six, tmp_path):
    captures, ids = six
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"versions": ["3", "4"], "captures": []}))
    with pytest.raises(ReviewError, match=r"bad.json is not a compare report.*disagreements"):
        read_compared(bad)
    report = compare_report(tmp_path / "report.json", ids[:2], disagreements=["9-dead"])
    with pytest.raises(ReviewError, match=r"disagreements \['9-dead'\] are not among"):
        read_compared(report)
    with pytest.raises(ReviewError, match="cannot read the compare report"):
        read_compared(tmp_path / "missing.json")


def test_the_page_refuses_a_malformed_decision_by_name():
    assert ui.decision_of(b'{"label": "3", "by": "ada"}') == {"label": "3", "by": "ada"}
    for body, said in ((b"label=3", "must be JSON"), (b"[]", 'with a "label"'),
                       (b'{"label": "3", "who": "x"}', r"unknown fields \['who'\]"),
                       (b'{"label": "' + b"x" * 5000 + b'"}', "at most 4096 bytes")):  # fmt: skip
        with pytest.raises(ValueError, match=said):
            ui.decision_of(body)


def test_review_flags_go_together():
    parser = ui.get_args_parser()
    for argv, said in ((["--labelled", "x"], "--labelled needs --review"),
                       (["--review", "c"], "--review needs --labelled")):  # fmt: skip
        with pytest.raises(ui.UserError, match=said):
            ui.check_review_flags(parser.parse_args(argv))
    ui.check_review_flags(parser.parse_args(["--review", "c", "--labelled", "x"]))
