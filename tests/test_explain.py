"""Grad-CAM (resnet_triton.explain) on a model trained for the test, where the class
evidence sits in a known quadrant of each image.

The shapes: 64x64 noise, a white square, cross or ring (the class) in one random
quadrant and a coloured disc (every class has one) in another. At 64 px the last
block's map is 2x2, one cell per quadrant. Seen (seeded, this CPU): 54% of the map's
mass on the evidence's quadrant (chance 25%), 16% on the disc's, and the brightest
quadrant is the evidence's for 92% of the images (Grad-CAM++: 55%, 16%, 94%).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from resnet_triton import cli
from resnet_triton.errors import UserError
from resnet_triton.explain import Explainer
from resnet_triton.training import TrainConfig, run

SIZE, HALF = 64, 32
CLASSES = ("cross", "ring", "square")  # ImageFolder's order
WHITE = (255, 255, 255)


def draw(kind: str, box: tuple[int, int, int, int], canvas: ImageDraw.ImageDraw) -> None:
    x0, y0, x1, y1 = box
    if kind == "square":
        canvas.rectangle(box, fill=WHITE)
    elif kind == "cross":
        canvas.line((x0, y0, x1, y1), fill=WHITE, width=4)
        canvas.line((x0, y1, x1, y0), fill=WHITE, width=4)
    else:
        canvas.ellipse(box, outline=WHITE, width=4)


def shape_image(kind: str, rng: np.random.Generator) -> tuple[Image.Image, int, int]:
    """(image, quadrant of the evidence, quadrant of the disc); quadrants 0..3 row-major."""
    noise = np.clip(rng.normal(110, 25, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(noise)
    canvas = ImageDraw.Draw(image)
    evidence, disc = (int(q) for q in rng.permutation(4)[:2])

    def box(quadrant: int, size: int) -> tuple[int, int, int, int]:
        x = (quadrant % 2) * HALF + int(rng.integers(3, HALF - size - 2))
        y = (quadrant // 2) * HALF + int(rng.integers(3, HALF - size - 2))
        return (x, y, x + size, y + size)

    draw(kind, box(evidence, 20), canvas)
    canvas.ellipse(box(disc, 18), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image, evidence, disc


def write_shapes(root, per_class: int, seed: int) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(seed)
    where = {}
    for kind in CLASSES:
        (root / kind).mkdir(parents=True)
        for n in range(per_class):
            image, evidence, disc = shape_image(kind, rng)
            path = root / kind / f"{n:03d}.png"
            image.save(path)
            where[str(path)] = (evidence, disc)
    return where


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """(checkpoint, {held-out image: (evidence quadrant, disc quadrant)})."""
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root / "data" / "train", 120, seed=0)
    write_shapes(root / "data" / "val", 30, seed=1)
    held_out = write_shapes(root / "held-out", 30, seed=2)
    config = TrainConfig(
        data=str(root / "data"), out=str(root / "train"), arch="resnet18", weights="none",
        epochs=6, lr=3e-3, resize_size=SIZE, crop_size=SIZE, workers=0, rrc_scale=(0.85, 1.0),
    )  # fmt: skip
    assert run(config)["best"]["val_top1"] >= 0.95
    return root / "train" / "checkpoint.pt", held_out


def quadrant_mass(heatmap: np.ndarray) -> np.ndarray:
    quadrants = [heatmap[:HALF, :HALF], heatmap[:HALF, HALF:], heatmap[HALF:, :HALF],
                 heatmap[HALF:, HALF:]]  # fmt: skip
    mass = np.array([q.sum() for q in quadrants])
    return mass / mass.sum()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_the_heatmap_falls_on_the_class_evidence(shapes, method):
    checkpoint, held_out = shapes
    paths = sorted(held_out)
    explained = Explainer.from_checkpoint(checkpoint, method).explain_files(paths)
    on_evidence, on_disc, brightest = [], [], []
    for path, e in zip(paths, explained, strict=True):
        evidence, disc = held_out[path]
        mass = quadrant_mass(e.heatmap)
        on_evidence.append(mass[evidence])
        on_disc.append(mass[disc])
        brightest.append(mass.argmax() == evidence)
    assert np.mean(on_evidence) >= 0.45
    assert np.mean(on_disc) <= 0.25
    assert np.mean(brightest) >= 0.85


def test_shapes_ranges_and_an_asked_class(shapes):
    checkpoint, held_out = shapes
    paths = sorted(held_out)[:4]
    explainer = Explainer.from_checkpoint(checkpoint)
    predicted = explainer.explain_files(paths)
    asked = explainer.explain_files(paths, label="ring")
    crops = np.stack([explainer.crop_file(p) for p in paths])
    pixels = torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    prep = explainer.spec.preprocessing
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (prep.mean, prep.std))
    with torch.no_grad():
        probs = torch.softmax(explainer.model((pixels - mean) / std), 1).numpy()
    for n, (p, t) in enumerate(zip(predicted, asked, strict=True)):
        assert p.index == probs[n].argmax() and p.label == CLASSES[p.index] == p.predicted
        assert p.score == pytest.approx(probs[n].max(), abs=1e-5)
        assert (t.label, t.index, t.predicted) == ("ring", 1, p.predicted)
        assert t.score == pytest.approx(probs[n, 1], abs=1e-5)
        assert p.heatmap.shape == (SIZE, SIZE) and p.heatmap.dtype == np.float32
        assert p.heatmap.min() >= 0 and p.heatmap.max() == pytest.approx(1.0)
        assert p.crop.shape == p.overlay().shape == (SIZE, SIZE, 3)
        assert p.overlay().dtype == np.uint8
    pairs = zip(predicted, asked, strict=True)
    assert any(not np.allclose(p.heatmap, t.heatmap) for p, t in pairs)  # another class


def test_cli_writes_overlays_and_heatmaps_and_skips_a_bad_file(shapes, tmp_path, capsys):
    checkpoint, held_out = shapes
    folder = tmp_path / "images"
    folder.mkdir()
    good = sorted(held_out)[:2]
    for n, path in enumerate(good):
        (folder / f"{n}.png").write_bytes(Path(path).read_bytes())
    (folder / "2.png").write_bytes(b"not a picture")
    out = tmp_path / "out"
    args = ["explain", "--checkpoint", str(checkpoint), "--method", "gradcam++", "--out", str(out)]
    assert cli.main([*args, str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: {folder / '2.png'}: not a decodable image (13 bytes, starting b'not a pi')\n"
    )
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["method"] == "gradcam++"
    assert [r["source"] for r in summary["images"]] == [str(folder / f"{n}.png") for n in (0, 1)]
    heatmaps = np.load(out / "heatmaps.npz")
    for record in summary["images"]:
        with Image.open(out / record["overlay"]) as overlay:
            assert overlay.size == (SIZE, SIZE) and overlay.mode == "RGB"
        assert heatmaps[record["heatmap"]].shape == (SIZE, SIZE)
        assert f"{record['source']}: {record['label']} (" in captured.out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--class", "cat"], f"error: class 'cat' is not one of {list(CLASSES)}"),
        (["--checkpoint", "{missing}"], "error: checkpoint {missing} does not exist"),
        (["--checkpoint", "{bad}"], "error: cannot load {bad}: "),
    ],
)
def test_bad_arguments_are_named(shapes, tmp_path, capsys, flags, message):
    checkpoint, held_out = shapes
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    names = {"missing": tmp_path / "none.pt", "bad": tmp_path / "bad.pt"}
    flags = [f.format(**names) for f in flags]
    argv = ["explain", "--checkpoint", str(checkpoint), *flags, sorted(held_out)[0]]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.startswith(message.format(**names))


def test_an_unknown_method_is_named(shapes):
    with pytest.raises(UserError, match=r"unknown explanation method 'lime'; choose from"):
        Explainer.from_checkpoint(shapes[0], method="lime")
