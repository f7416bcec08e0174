"""The loop from live traffic back to a proven model (README, "Learn from live traffic"),
end to end on the real parts, each step the command a user types:

1. version 1, the calibrated test model, built with `serving.capture: true` and kept in a
   store, served by the CPU container (`RESNET_TRITON_CAPTURE=1 docker compose up`);
2. its traffic: digits, and photographs of no class, which it answers "unknown";
3. the capture copied out of the container's volume (`docker compose cp`);
4. some of it labelled in the review page, in Chromium (keys: a digit, or n);
5. version 2 trained with those images (`train --extra`), calibrated, built and gated on
   its held-out images, kept as the store's next version (what `make pipeline` publishes;
   the pipeline itself: tests/pipeline/test_pipeline.py);
6. `compare` of versions 1 and 2 on the capture, with the review's labels;
7. version 2 as a canary on the replicas behind nginx, promoted by its live figures, under
   load from clients that never retry.
"""

import json
import re
import shutil
import time

import pytest
from conftest import FRR, OUTSIDE, SMALL, start_ui, up_replicas
from playwright.sync_api import expect
from test_canary_rollout import CANARY
from test_rollout import replicas, rollout_under_load

from resnet_triton import cli
from resnet_triton.client import Classifier
from resnet_triton.pipeline.store import keep_version, versions_dir
from resnet_triton.serving.capture import NOT_OURS, captured, labels_of
from resnet_triton.serving.repository import DEFAULT_ENV_PATH

pytestmark = pytest.mark.docker

SHARE = 0.25  # of the answers that are not "unknown"
# A repository rendered with capture passes the classifier its batch of encoded images
# too: its /dev/shm at the defaults (serving/resources.py says so at start).
SHM = {"RESNET_TRITON_SHM_SIZE": "1536m"}
# version 2: version 1's weights trained on, with the reviewed images (the test model's
# size: conftest.SMALL)
TRAIN = [
    "--arch=resnet18",
    "--epochs=2",
    "--lr=1e-3",
    "--no-hflip",
    "--workers=0",
    "--no-tensorboard",
    *(f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()),
]


def publish(store, checkpoint, images, serving, work) -> int:
    """`checkpoint` built for the container with `serving`, gated on `images`, and kept as
    the store's next version."""
    assert cli.main(["build", "--checkpoint", str(checkpoint), "--repository", str(store / "cpu"),
                     "--work-dir", str(work), "--target=cpu", "--images", str(images),
                     "--env-path", DEFAULT_ENV_PATH, "--serving", str(serving)]) == 0  # fmt: skip
    return keep_version(store, "cpu", {"checkpoint": str(checkpoint)})


def served_with_capture(project, traffic: list) -> dict[bytes, object]:
    """Each image of `traffic` sent once to the container: bytes -> its Result."""
    with Classifier(f"localhost:{project.ports.grpc}", "grpc", retries=2) as client:
        results = client.classify(traffic)
    assert [r.error for r in results if not r.ok] == []
    return {path.read_bytes(): result for path, result in zip(traffic, results, strict=True)}


def copied_capture(project, folder, unknown: int) -> list[tuple[dict, object]]:
    """The container's capture, copied out once its writers have kept at least `unknown`
    "unknown" answers (they write off the request path)."""
    for _ in range(60):
        shutil.rmtree(folder, ignore_errors=True)
        copied = project("cp", "tritonserver:/captures", str(folder))
        assert copied.returncode == 0, copied.stderr
        found = captured(folder)
        if sum(record["unknown"] for record, _ in found) >= unknown:
            return found
        time.sleep(0.5)
    raise AssertionError(f"fewer than {unknown} unknown answers captured: {len(found)} in all")


def review(browser, url, truth: dict[str, str]) -> list[str]:
    """Every capture in the page's queue labelled by what it is, with the keys (a digit,
    or n for none of ours); the captures in the order the queue showed them."""
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(url + "/#review")
    section = page.locator("#review")
    shown = []
    for _ in truth:
        expect(section).to_have_attribute("data-capture", re.compile("."))
        shown.append(section.get_attribute("data-capture"))
        page.keyboard.press("n" if truth[shown[-1]] == NOT_OURS else truth[shown[-1]])
        expect(section).not_to_have_attribute("data-capture", shown[-1])
    expect(section).to_have_attribute("data-state", "empty")
    page.close()
    return shown


def test_the_loop_from_live_traffic_to_a_promoted_model(
    cpu_image, calibrated, digits, halves, compose_project, browser, tmp_path, capsys
):
    store, work = tmp_path / "store", tmp_path / "work"
    serving = tmp_path / "serving.yaml"
    serving.write_text("capture: true\n")
    v1, _ = calibrated
    assert publish(store, v1, digits / "val", serving, work / "v1") == 1
    kept = versions_dir(store, "cpu")

    # 1-3: version 1 in the CPU container, capturing; its traffic; the capture copied out.
    project = compose_project(kept / "1")
    project.env.update(RESNET_TRITON_CAPTURE="1", RESNET_TRITON_CAPTURE_SHARE=str(SHARE), **SHM)
    started = project.up()
    assert started.returncode == 0, started.stderr + project.logs()[-3000:]
    digit_images = sorted(halves[1].glob("*/*.png"))[::3]  # 60 held-out, every class
    answers = served_with_capture(project, [*digit_images, *OUTSIDE])
    unknown = {data for data, result in answers.items() if result.unknown}
    outside = {path.read_bytes() for path in OUTSIDE}
    assert unknown & outside  # some photos it knows are none of its classes (seen: 6 of 28)
    found = copied_capture(project, tmp_path / "captures", len(unknown))
    by_bytes = {path.read_bytes(): record for record, path in found}
    records = {record["capture"]: record for record, _ in found}
    assert unknown <= set(by_bytes)  # every unknown answer is kept, as it was answered
    for data, record in by_bytes.items():
        result = answers[data]
        assert (record["unknown"], record["version"]) == (result.unknown, "1")
        assert record["answer"] == result.top1.label

    # 4: the page's review queue, every capture labelled by what it is.
    truth = {record["capture"]: NOT_OURS if data in outside else path_class(data, digit_images)
             for data, record in by_bytes.items()}  # fmt: skip
    labelled = tmp_path / "labelled"
    flags = ["--review", str(tmp_path / "captures"), "--labelled", str(labelled),
             "--reviewer", "loop-test"]  # fmt: skip
    with start_ui(f"localhost:{project.ports.grpc}", tmp_path / "ui.log", *flags) as url:
        shown = review(browser, url, truth)
    project.down()
    unsure = [records[i]["score"] for i in shown if records[i]["unknown"]]
    assert shown[: len(unsure)] == [i for i in shown if records[i]["unknown"]]  # first
    assert unsure == sorted(unsure)  # the least sure first
    decided = labels_of(labelled)
    assert {i: (d["label"], d["by"]) for i, d in decided.items()} == {
        i: (label, "loop-test") for i, label in truth.items()}  # fmt: skip

    # 5: version 2, trained with them, calibrated, gated on its held-out images, kept.
    v2 = tmp_path / "v2"
    assert cli.main(["train", "--data", str(digits), "--extra", str(labelled), "--out", str(v2),
                     "--weights", str(v1), *TRAIN]) == 0  # fmt: skip
    said = capsys.readouterr().out
    reviewed_digits = sum(d["label"] != NOT_OURS for d in decided.values())
    assert f"skipped the {len(decided) - reviewed_digits} images in" in said
    assert cli.main(["calibrate", "--checkpoint", str(v2 / "checkpoint.pt"), "--frr", str(FRR),
                     "--data", str(halves[0]), "--outside", *map(str, OUTSIDE)]) == 0  # fmt: skip
    assert publish(store, v2 / "checkpoint.pt", v2 / "holdout", serving, work / "v2") == 2

    # 6: both versions replayed the capture.
    report = tmp_path / "compare"
    assert cli.main(["compare", "--versions", "1", "2", "--store", str(store), "--captured",
                     str(tmp_path / "captures"), "--labelled", str(labelled),
                     "--out", str(report)]) == 0  # fmt: skip
    summary = json.loads((report / "report.json").read_text())["summary"]
    assert summary["captures"] == len(found)
    for version in ("1", "2"):
        assert summary["per_version"][version]["accuracy"]["trials"] == reviewed_digits
    capsys.readouterr()

    # 7: version 2 as a canary on the replicas, promoted by the analysis, nothing lost.
    fleet = up_replicas(compose_project, kept / "1", **SHM)
    # every class, the mix each version's threshold was calibrated on: the "unknown" rule
    # compares rates, and one class's rate moves with retraining (v2 11.7% against v1 6.3%
    # on classes 0-2 alone in one CI run)
    images = [p.read_bytes() for p in sorted((digits / "val").glob("*/*.png"))]
    sent, code, out, err = rollout_under_load(
        capsys, fleet, "grpc", images, "rollout", f"--store={store}", "--version=2",
        f"--images={v2 / 'holdout'}", *CANARY,
    )  # fmt: skip
    assert code == 0, err + out
    assert "takes 25% of the requests (nginx weight 2, each of 2 replicas 3)" in out
    assert "canary analysis: every rule passed" in out, out
    assert [r.error for r, _ in sent if not r.ok] == []  # clients that never retry
    versions = {r.model_version for r, _ in sent}
    assert versions == {"1", "2"}, versions
    assert {r.model_version for r, after in sent if after} == {"2"}
    assert set(replicas(fleet).values()) == {str(kept / "2")}


def path_class(data: bytes, images: list) -> str:
    """The class folder of the image whose bytes are `data`."""
    return next(path.parent.name for path in images if path.read_bytes() == data)
