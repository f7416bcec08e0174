"""`resnet-triton ui` against the real Triton server, driven in Debian's Chromium by
Playwright (no browser download): the top-1 on the page is the client library's
answer for the same bytes, a non-image shows its named error and the page goes on.
The screenshot is saved as artifacts/ui/page.png."""

import pytest
from conftest import PHOTOS, ROOT, post_image, start_ui
from playwright.sync_api import expect

from resnet_triton.client import Classifier

pytestmark = pytest.mark.integration

NOT_AN_IMAGE = b"name,score\nthis is a CSV file, not a picture\n"


@pytest.fixture(scope="module")
def grpc_url(triton) -> str:
    return f"localhost:{triton.ports.grpc}"


@pytest.fixture(scope="module")
def page_url(grpc_url, checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    with start_ui(grpc_url, log, "--checkpoint", str(checkpoint), "--top-k", "3") as url:
        yield url


def test_the_api_answers_as_the_client_library(page_url, grpc_url):
    photo = PHOTOS[0].read_bytes()
    with Classifier(grpc_url) as client:
        [expected] = client.classify([photo], top_k=3)
        [refused] = client.classify([NOT_AN_IMAGE], top_k=3)
    status, answer = post_image(page_url, PHOTOS[0].name, photo)
    assert status == 200, answer
    assert [(p["label"], p["score"]) for p in answer["predictions"]] == [
        (p.label, p.score) for p in expected.predictions
    ]
    assert answer["latency_ms"] > 0 and answer["overlay"].startswith("data:image/png;base64,")
    status, answer = post_image(page_url, "notes.csv", NOT_AN_IMAGE)
    assert (status, answer) == (422, {"file": "notes.csv", "error": refused.error})
    assert "not a decodable image" in refused.error


def test_the_page_in_a_browser(page_url, grpc_url, browser, tmp_path):
    photos = PHOTOS[:2]
    with Classifier(grpc_url) as client:
        expected = [r.top1.label for r in client.classify([p.read_bytes() for p in photos])]
        [refused] = client.classify([NOT_AN_IMAGE])
    bad = tmp_path / "notes.csv"
    bad.write_bytes(NOT_AN_IMAGE)
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.goto(page_url)
    expect(page.locator("#model")).to_contain_text("at " + grpc_url + " (grpc), top 3, Grad-CAM")
    expect(page.locator("#tabs")).to_be_hidden()  # no --review: no Review tab

    page.set_input_files("#files", [str(photos[0]), str(bad)])
    page.wait_for_selector(".card[data-state=done]")
    page.wait_for_selector(".card[data-state=error]")
    done = page.locator(".card[data-state=done]")
    assert done.locator("h2").inner_text() == photos[0].name
    assert done.locator(".label").first.inner_text() == expected[0]
    assert done.get_attribute("data-answer") == expected[0]  # not below a reject_below
    assert done.locator(".label").count() == 3
    overlay = done.locator('img[alt="Grad-CAM overlay"]')
    assert overlay.evaluate("img => img.complete && img.naturalWidth") == 64  # the crop size
    error = page.locator(".card[data-state=error]")
    assert error.locator("h2").inner_text() == "notes.csv"
    assert error.locator(".error").inner_text() == refused.error

    # The page goes on: a second photo, dropped onto the drop zone this time.
    data = list(photos[1].read_bytes())
    page.evaluate(
        """([name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
            document.getElementById("drop").dispatchEvent(
                new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [photos[1].name, data],
    )
    expect(page.locator(".card[data-state=done]")).to_have_count(2)
    assert page.locator(".card").first.locator(".label").first.inner_text() == expected[1]
    shot = ROOT / "artifacts" / "ui" / "page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()
