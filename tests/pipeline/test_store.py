"""The model store's kept versions (pipeline/store.py): numbers claimed atomically."""

import json
import threading

from resnet_triton.pipeline.store import claim_version, keep_version, published_versions


def latest_repository(store, files: int = 20) -> None:
    for index in range(files):
        model = store / "cpu" / f"model{index}" / "1" / "model.onnx"
        model.parent.mkdir(parents=True)
        model.write_bytes(bytes(64 * 1024))


def test_concurrent_publishers_each_keep_a_version_of_their_own(tmp_path):
    """Eight publishers at once (threads started together): each gets a number no other
    got, each version holds the whole repository renumbered, and its record is its own."""
    latest_repository(tmp_path)
    publishers = 8
    start = threading.Barrier(publishers)
    numbers, errors = {}, []

    def publish(who: int) -> None:
        start.wait()
        try:
            numbers[who] = keep_version(tmp_path, "cpu", {"publisher": who})
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(repr(exc))

    threads = [threading.Thread(target=publish, args=(who,)) for who in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(numbers.values()) == list(range(1, publishers + 1))
    assert published_versions(tmp_path, "cpu") == list(range(1, publishers + 1))
    for who, number in numbers.items():
        kept = tmp_path / "versions" / "cpu"
        assert json.loads((kept / f"{number}.json").read_text()) == {
            "publisher": who, "version": number
        }  # fmt: skip
        assert len(list((kept / str(number)).glob(f"model*/{number}/model.onnx"))) == 20
    assert [p.name for p in (tmp_path / "versions" / "cpu").glob(".*")] == []  # no claims left


def test_a_claimed_or_finished_number_is_skipped(tmp_path):
    kept = tmp_path / "versions" / "cpu"
    (kept / ".1.partial").mkdir(parents=True)  # a publisher at work (or one that crashed)
    assert claim_version(tmp_path, "cpu") == (2, kept / ".2.partial")
    (kept / "2").mkdir()  # ... which finished: the next claim is past it
    (kept / ".2.partial").rmdir()
    assert claim_version(tmp_path, "cpu") == (3, kept / ".3.partial")
