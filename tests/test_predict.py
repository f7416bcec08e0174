"""`resnet-triton predict`: every class's probability without a server, from a checkpoint
or its exported ONNX file, through the serving preprocessing."""

import json

import numpy as np
import pytest
from conftest import OUTSIDE

from resnet_triton import cli
from resnet_triton.predict import Predictor
from resnet_triton.resnet import load_checkpoint


def predicted(capsys, *argv) -> tuple[int, list[dict], str]:
    code = cli.main(["predict", *map(str, argv), "--json"])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_every_class_probability_from_a_checkpoint_and_from_its_onnx_file(
    checkpoint, repository, digits, capsys
):
    images = [sorted((digits / "val" / label).glob("*.png"))[0] for label in "0379"]
    code, by_checkpoint, _ = predicted(capsys, *images, "--checkpoint", checkpoint)
    assert code == 0
    spec, _, _ = load_checkpoint(checkpoint)
    for item, image in zip(by_checkpoint, images, strict=True):
        scores = list(item["probabilities"].values())
        assert item["image"] == str(image)
        assert sorted(item["probabilities"]) == sorted(spec.labels)  # every class, once
        assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-5
        assert item["answer"] == next(iter(item["probabilities"]))
    assert [item["answer"] for item in by_checkpoint] == list("0379")  # the held-out digits
    onnx = next(repository.glob("classifier/*/model.onnx"))
    code, by_onnx, _ = predicted(capsys, *images, "--onnx", onnx)
    assert code == 0
    for a, b in zip(by_checkpoint, by_onnx, strict=True):
        assert a["answer"] == b["answer"]
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in spec.labels) < 1e-4


def test_the_text_output_and_a_bad_file_that_fails_alone(checkpoint, digits, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    good = sorted((digits / "val" / "5").glob("*.png"))[0]
    assert cli.main(["predict", str(bad), str(good), "--checkpoint", str(checkpoint)]) == 1
    out, err = capsys.readouterr()
    assert f"error: {bad}:" in err
    lines = out.splitlines()
    assert lines[0] == f"{good}: 5"
    assert len(lines) == 1 + 10 and lines[1].split()[0] == "5"  # every class, the top first


def test_gradcam_overlays_with_a_checkpoint_and_refused_for_onnx(
    checkpoint, repository, digits, tmp_path, capsys
):
    image = sorted((digits / "val" / "2").glob("*.png"))[0]
    out = tmp_path / "cams"
    assert cli.main(["predict", str(image), "--checkpoint", str(checkpoint),
                     "--gradcam", str(out)]) == 0  # fmt: skip
    records = json.loads((out / "explanations.json").read_text())["images"]
    assert [(r["source"], r["predicted"]) for r in records] == [(str(image), "2")]
    assert (out / records[0]["overlay"]).is_file()
    onnx = next(repository.glob("classifier/*/model.onnx"))
    assert cli.main(["predict", str(image), "--onnx", str(onnx), "--gradcam", str(out)]) == 1
    assert "--gradcam needs --checkpoint: an ONNX file has no gradients" in capsys.readouterr().err


def test_a_calibrated_model_says_unknown_below_its_threshold(calibrated, capsys):
    checkpoint, _ = calibrated
    predictor = Predictor.from_checkpoint(checkpoint)
    scores = predictor.probabilities(OUTSIDE)
    below = scores.max(1) < predictor.spec.reject_below
    assert below.any()  # some photographs are none of the digits
    code, items, _ = predicted(capsys, *OUTSIDE, "--checkpoint", checkpoint)
    assert code == 0
    answers = np.array([item["answer"] for item in items])
    assert list(answers == "unknown") == list(below)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--onnx", "missing.onnx"], "ONNX file missing.onnx does not exist"),
        (["--checkpoint", "missing.pt"], "checkpoint missing.pt does not exist"),
    ],
)
def test_a_missing_model_is_named(argv, message, digits, capsys):
    image = sorted((digits / "val" / "1").glob("*.png"))[0]
    assert cli.main(["predict", str(image), *argv]) == 1
    assert message in capsys.readouterr().err
