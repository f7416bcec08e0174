"""`train --extra DIR`: labelled folders (the review page's) added to the base data by
class name, a held-out share by file name hash, and that share in the gates' folder."""

import json
import shlex
from pathlib import Path

import pytest
from PIL import Image

from resnet_triton.build.command import get_args_parser as build_parser
from resnet_triton.build.images import held_out_set
from resnet_triton.data import DataError
from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.capture import LABELS_LOG, NOT_OURS
from resnet_triton.spec import Preprocessing, SpecError
from resnet_triton.training.config import TrainConfig
from resnet_triton.training.distributed import Context
from resnet_triton.training.extra_data import HOLDOUT_DIR, is_held_out, list_extra
from resnet_triton.training.loop import Trainer
from resnet_triton.training.options import config_from_args, get_args_parser

CLASSES = ["0", "1", "2", "3"]
TINY = {"resize_size": 36, "crop_size": 32, "workers": 0, "weights": "none", "arch": "resnet18"}


def capture_id(i: int) -> str:
    return f"17335000000000000{i:02d}-1a2b3c4d"


# At share 0.2, of capture_id(0..11) exactly these are held out: fixed by the names alone.
HELD_OUT = {capture_id(1), capture_id(8), capture_id(9)}


def image(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (shade, 255 - shade, 0)).save(path)
    return path


def base_data(root: Path) -> Path:
    """4 classes of 5 images: 16 train, 4 val by the stratified 80/20 split."""
    for name in CLASSES:
        for i in range(5):
            image(root / name / f"{i}.png", 40 * int(name) + i)
    return root


def review_folder(root: Path) -> Path:
    """What the review page writes: classes "3" (6 images) and "1" (4), none of "0" and "2",
    2 not-ours, its log, and files that are no training images."""
    for i in range(6):
        image(root / "3" / f"{capture_id(i)}.png", 200)
    for i in range(6, 10):
        image(root / "1" / f"{capture_id(i)}.png", 50)
    for i in (10, 11):
        image(root / NOT_OURS / f"{capture_id(i)}.png", 120)
    (root / LABELS_LOG).write_text('{"capture": "x", "label": "3", "by": "ann"}\n')
    image(root / ".thumbnails" / "t.png")  # hidden folder
    image(root / "3" / ".cache" / "c.png")  # hidden folder inside a class
    image(root / "3" / f"._{capture_id(0)}.png")  # macOS resource fork
    (root / "3" / "notes.txt").write_text("not an image")
    return root


def test_the_held_out_share_is_chosen_by_file_name_alone():
    names = [capture_id(i) for i in range(12)]
    assert {n for n in names if is_held_out(f"{n}.png", 0.2)} == HELD_OUT
    # A larger share only adds images: none crosses back into training.
    assert {n for n in names if is_held_out(f"{n}.png", 0.5)} > HELD_OUT
    assert not any(is_held_out(f"{n}.png", 0.0) for n in names)


def test_class_folders_map_by_name_onto_the_base_classes(tmp_path):
    extra = list_extra(review_folder(tmp_path / "labelled"), CLASSES, Preprocessing(), 0.2)
    items = {Path(p).stem: target for p, target in extra.train + extra.held_out}
    # "3" keeps index 3 although the folder has only "1" and "3" (an ImageFolder of it
    # alone would make it 1).
    assert items == {capture_id(i): 3 for i in range(6)} | {capture_id(i): 1 for i in range(6, 10)}
    assert {Path(p).stem for p, _ in extra.held_out} == HELD_OUT
    assert len(extra.train) == 7 and extra.not_ours == 2
    assert extra.ignored == [str(tmp_path / "labelled" / "3" / "notes.txt")]
    assert extra.summary() == (
        f"extra data {tmp_path / 'labelled'}: 10 images in 2 classes (7 train, 3 held out), "
        "2 not-ours skipped"
    )


def test_the_split_stays_as_the_folder_grows(tmp_path):
    folder = review_folder(tmp_path / "labelled")
    before = list_extra(folder, CLASSES, Preprocessing(), 0.2)
    for i in range(12, 40):
        image(folder / "2" / f"{capture_id(i)}.png")
    after = list_extra(folder, CLASSES, Preprocessing(), 0.2)
    assert set(before.held_out) <= set(after.held_out)
    assert set(before.train) <= set(after.train)
    # Relabelled (the review moves the file to another class): it stays on its side.
    (folder / "3" / f"{capture_id(1)}.png").rename(folder / "2" / f"{capture_id(1)}.png")
    moved = list_extra(folder, CLASSES, Preprocessing(), 0.2)
    assert (str(folder / "2" / f"{capture_id(1)}.png"), 2) in moved.held_out


def test_a_class_the_base_data_lacks_is_refused(tmp_path):
    folder = review_folder(tmp_path / "labelled")
    image(folder / "cat" / "a.png")
    with pytest.raises(DataError) as error:
        list_extra(folder, CLASSES, Preprocessing(), 0.2)
    assert str(error.value) == (
        f"--extra {folder}: class folder 'cat' is not a class of the base data; valid: "
        f"0, 1, 2, 3 (images of none of them go in {NOT_OURS}/)"
    )
    (folder / "cat" / "a.png").rename(folder / "a.png")
    (folder / "cat").rmdir()
    with pytest.raises(DataError, match=r"--extra .*: a.png is in no class folder; move it"):
        list_extra(folder, CLASSES, Preprocessing(), 0.2)
    with pytest.raises(DataError, match="--extra .*missing: no such folder"):
        list_extra(tmp_path / "missing", CLASSES, Preprocessing(), 0.2)


def test_flags_and_yaml_set_the_extra_folders(tmp_path):
    parser = get_args_parser()
    args = parser.parse_args(
        ["--data", "d", "--extra", "a", "--extra", "b", "--extra-holdout", "0.3"]
    )
    cfg = config_from_args(args)
    assert cfg.extra == ("a", "b") and cfg.extra_holdout == 0.3
    assert cfg.as_dict()["extra"] == (str(Path("a").resolve()), str(Path("b").resolve()))
    (tmp_path / "c.yaml").write_text("data: d\nextra: [x]\n")
    cfg = config_from_args(parser.parse_args(["--config", str(tmp_path / "c.yaml")]))
    assert cfg.extra == ("x",) and cfg.extra_holdout == 0.2
    with pytest.raises(SpecError, match=r"--extra-holdout must lie in \[0, 1\), got 1.0"):
        TrainConfig(data="d", extra_holdout=1.0).validate()


def trainer(tmp_path, **changes) -> Trainer:
    cfg = TrainConfig(
        data=str(base_data(tmp_path / "data")), out=str(tmp_path / "run"),
        extra=(str(review_folder(tmp_path / "labelled")),), batch_size=4, **TINY, **changes,
    )  # fmt: skip
    return Trainer(cfg, Context())


def test_the_run_trains_on_the_extra_share_and_holds_out_the_rest(tmp_path, capsys):
    splits = trainer(tmp_path).splits
    assert (len(splits.train), len(splits.val)) == (16 + 7, 4 + 3)
    extra_val = {Path(p).stem: t for p, t in splits.val.samples[-3:]}
    assert extra_val == {capture_id(1): 3, capture_id(8): 1, capture_id(9): 1}
    assert splits.train.targets == [t for _, t in splits.train.samples]
    assert not any(NOT_OURS in p or ".thumbnails" in p for p, _ in splits.train.samples)
    lines = capsys.readouterr().out.splitlines()
    assert (
        f"extra data {tmp_path / 'labelled'}: 10 images in 2 classes (7 train, 3 held out), "
        "2 not-ours skipped" in lines
    )
    assert any(line.startswith(f"skipped the 2 images in {tmp_path / 'labelled' / NOT_OURS}: ")
               for line in lines)  # fmt: skip
    # The gates' folder: the base validation split and the extra held-out share.
    holdout = tmp_path / "run" / "holdout"
    assert any(str(holdout) in line and "build --images" in line for line in lines)
    files = {p.relative_to(holdout).as_posix() for p in holdout.rglob("*") if p.is_file()}
    assert len(files) == 7 and {f"3/{capture_id(1)}.png", f"1/{capture_id(8)}.png"} < files


def test_an_extra_image_that_does_not_decode_stops_or_is_skipped(tmp_path):
    bad = tmp_path / "labelled" / "2" / f"{capture_id(20)}.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"1 extra image\(s\) do not decode .*" + bad.name):
        trainer(tmp_path)
    splits = trainer(tmp_path, on_bad_image="skip").splits
    assert len(splits.train) + len(splits.val) == 20 + 10
    assert [line.split(":")[0] for line in splits.bad_images] == [str(bad)]


def test_the_held_out_share_is_evaluated_and_reaches_the_gates(tmp_path):
    run = trainer(tmp_path, epochs=1, tensorboard=False)
    run.fit()
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert evaluation["images"] == 7  # the validation split, extra held-out images included
    extra = evaluation["extra_holdout"]
    assert extra["images"] == 3 and extra["folders"] == [str(tmp_path / "labelled")]
    support = {c: v["support"] for c, v in extra["per_class"].items()}
    assert support == {"0": 0, "1": 2, "2": 0, "3": 1}
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    spec, _, payload = load_checkpoint(checkpoint)
    gates = held_out_set(spec, payload, checkpoint, tmp_path / "run" / "holdout")
    assert len(gates.paths) == 7
    assert sorted(Path(p).stem for p in gates.paths if "-" in Path(p).stem) == sorted(HELD_OUT)


def test_the_documented_commands_parse_as_typed():
    readme = (Path(__file__).parents[2] / "train" / "README.md").read_text()
    section = readme.split("### Extra data")[1].split("```bash\n")[1].split("```")[0]
    train, build = (shlex.split(line) for line in section.strip().splitlines())
    assert [train[1], build[1]] == ["train", "build"] and train[0] == build[0]
    cfg = config_from_args(get_args_parser().parse_args(train[2:]))
    images = build_parser().parse_args(build[2:]).images
    assert cfg.extra == ("artifacts/labelled",)
    assert images == Path(cfg.out) / HOLDOUT_DIR  # the folder the run writes
