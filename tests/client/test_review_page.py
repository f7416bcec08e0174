"""The review view of `resnet-triton ui --review` against the real Triton server, in
Debian's Chromium driven by Playwright: the queue's order (a compare report's
disagreement first), a click and the keys file images into the labelled ImageFolder
with a log line naming the reviewer, relabelling moves the file, and the API names
what it refuses. The screenshot is saved as artifacts/ui/review.png."""

import json
import time
import urllib.error
import urllib.request

import pytest
from conftest import PHOTOS, ROOT, start_ui
from playwright.sync_api import expect

from resnet_triton.serving.capture import LABELS_LOG, NOT_OURS, Capture, CaptureConfig, captured
from resnet_triton.serving.capture import labels_of as decisions

pytestmark = pytest.mark.integration

JPEG = next(p for p in PHOTOS if p.suffix == ".jpg")


@pytest.fixture(scope="module")
def captures(digits, tmp_path_factory):
    """Four captures, oldest first: a sure 3, an unsure 5 (0.4), a photo answered unsure
    (0.2), a sure 7; their ids. The answers stand for what a served model said."""
    folder = tmp_path_factory.mktemp("review") / "captures"
    digit = {d: sorted((digits / "val" / d).iterdir())[0].read_bytes() for d in "357"}
    capture = Capture(CaptureConfig(folder, share=1.0))
    for image, answer, score, unknown in ((digit["3"], "3", 0.9, False),
                                          (digit["5"], "5", 0.4, True),
                                          (JPEG.read_bytes(), "1", 0.2, True),
                                          (digit["7"], "7", 0.95, False)):  # fmt: skip
        assert capture.offer(image, answer, score, unknown, version="3")
        time.sleep(0.002)
    capture.close()
    return folder, [record["capture"] for record, _ in captured(folder)]


@pytest.fixture(scope="module")
def review_url(triton, captures, tmp_path_factory):
    """The page with --review, a compare report putting the newest capture (a sure 7)
    among the disagreements, and a default reviewer; (url, labelled folder)."""
    folder, ids = captures
    root = folder.parent
    agreed = {"label": "3", "score": 0.9, "unknown": False, "error": None, "latency_ms": 1.0}
    report = {"versions": ["3", "4"], "disagreements": [ids[3]], "captures": [
        {"capture": i, "agree": i != ids[3],
         "answers": {"3": agreed, "4": {**agreed, "label": "1"} if i == ids[3] else agreed}}
        for i in ids]}  # fmt: skip
    (root / "report.json").write_text(json.dumps(report))
    flags = ["--review", str(folder), "--labelled", str(root / "labelled"),
             "--compare", str(root / "report.json"), "--reviewer", "night-shift"]  # fmt: skip
    with start_ui(f"localhost:{triton.ports.grpc}", root / "ui.log", *flags) as url:
        yield url, root / "labelled"


def call(url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, or of a POST of `body`."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read()


def files(labelled) -> list[str]:
    return sorted(p.relative_to(labelled).as_posix() for p in labelled.glob("*/*"))


def test_labelling_in_the_browser(review_url, captures, browser):
    url, labelled = review_url
    _, ids = captures
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(url)
    page.locator("#tabs button[data-tab=review]").click()
    section = page.locator("#review")
    expect(section).to_have_attribute("data-capture", ids[3])  # the disagreement first
    page.fill("#reviewer", "ada")
    page.goto("about:blank")
    page.goto(url + "/#review")  # the name is remembered, and #review opens the tab
    expect(page.locator("#reviewer")).to_have_value("ada")
    expect(page.locator("#review-count")).to_have_text("0 labelled, 4 left")
    classes = page.locator("#review-classes button")
    assert [b.get_attribute("data-label") for b in classes.all()] == [str(d) for d in range(10)]
    answers = page.locator("#review-answers")
    expect(answers).to_contain_text("version 3: 3 (0.9000)")
    expect(answers).to_contain_text("version 4: 1 (0.9000)")
    expect(answers).to_contain_text("the versions disagree")
    image = page.locator("#review-image")
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("img => img.naturalWidth") > 0

    classes.nth(7).click()  # a click
    expect(section).to_have_attribute("data-capture", ids[2])  # then unknown, lowest score
    assert decisions(labelled)[ids[3]] | {"time": ""} == {
        "capture": ids[3], "label": "7", "by": "ada", "time": ""}  # fmt: skip
    expect(answers).to_contain_text("unknown, top 1 (0.2000)")
    page.keyboard.press("n")  # not one of ours: the photo, as the JPEG it is
    expect(section).to_have_attribute("data-capture", ids[1])
    page.keyboard.press("s")  # skipped: to the end, nothing written
    expect(section).to_have_attribute("data-capture", ids[0])
    expect(page.locator("#review-count")).to_have_text("2 labelled, 2 left")
    page.keyboard.press("3")
    expect(section).to_have_attribute("data-capture", ids[1])
    page.fill("#reviewer", "")  # no name on the page: the server's --reviewer
    page.locator("#review-image").click()  # keys go to the page, not the name field
    page.keyboard.press("5")
    expect(section).to_have_attribute("data-state", "empty")
    expect(page.locator("#review-count")).to_have_text("4 labelled, 0 left")
    expect(page.locator("#review-empty")).to_be_visible()

    assert files(labelled) == sorted([f"7/{ids[3]}.png", f"{NOT_OURS}/{ids[2]}.jpg",
                                      f"3/{ids[0]}.png", f"5/{ids[1]}.png"])  # fmt: skip
    assert (labelled / NOT_OURS / f"{ids[2]}.jpg").read_bytes() == JPEG.read_bytes()
    by = {i: (d["label"], d["by"]) for i, d in decisions(labelled).items()}
    assert by == {ids[3]: ("7", "ada"), ids[2]: (NOT_OURS, "ada"), ids[0]: ("3", "ada"),
                  ids[1]: ("5", "night-shift")}  # fmt: skip
    shot = ROOT / "artifacts" / "ui" / "review.png"
    page.goto(url + "/#review")
    page.screenshot(path=str(shot), full_page=True)
    page.close()


def test_the_review_api(review_url, captures):
    url, labelled = review_url
    _, ids = captures
    status, kind, body = call(f"{url}/api/review")
    state = json.loads(body)
    assert status == 200 and state["classes"] == [str(d) for d in range(10)]
    assert state["not_ours"] == NOT_OURS and state["reviewer"] == "night-shift"
    assert json.loads(call(f"{url}/api/model")[2])["review"] is True
    assert call(f"{url}/api/review/{ids[2]}/image")[1:] == ("image/jpeg", JPEG.read_bytes())
    assert call(f"{url}/api/review/{ids[0]}/image")[1] == "image/png"

    for bad, said in (("12-XYZ", "'12-XYZ' is not a capture id"), ("99-abc", "no capture 99-abc")):
        status, _, body = call(f"{url}/api/review/{bad}/image")
        assert (status, said in json.loads(body)["error"]) == (404, True), body
        status, _, body = call(f"{url}/api/review/{bad}", b'{"label": "3"}')
        assert (status, said in json.loads(body)["error"]) == (404, True), body
    status, _, body = call(f"{url}/api/review/{ids[0]}", b'{"label": "cat"}')
    assert status == 422
    assert json.loads(body)["error"] == f"label 'cat' is not one of {[*state['classes'], NOT_OURS]}"
    status, _, body = call(f"{url}/api/review/{ids[0]}", b"label=cat")
    assert status == 400 and "must be JSON" in json.loads(body)["error"]

    # Relabelling moves the one file and logs a second line.
    assert call(f"{url}/api/review/{ids[0]}", b'{"label": "3"}')[0] == 200
    assert f"3/{ids[0]}.png" in files(labelled)
    status, _, body = call(f"{url}/api/review/{ids[0]}", b'{"label": "8", "by": "bob"}')
    assert status == 200, body
    assert (json.loads(body)["label"], json.loads(body)["by"]) == ("8", "bob")
    assert f"8/{ids[0]}.png" in files(labelled) and f"3/{ids[0]}.png" not in files(labelled)
    assert decisions(labelled)[ids[0]]["label"] == "8"
    lines = [json.loads(line) for line in (labelled / LABELS_LOG).read_text().splitlines()]
    assert [line["label"] for line in lines if line["capture"] == ids[0]][-2:] == ["3", "8"]
