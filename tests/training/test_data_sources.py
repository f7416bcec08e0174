"""Data beyond one ImageFolder, through `resnet-triton train`: a CSV or JSON-lines manifest,
labels from file names by a pattern, a test split that only the final evaluation reads,
and normalization statistics from the training split, carried in the spec."""

import contextlib
import io
import json
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from PIL import Image

from resnet_triton import cli, data
from resnet_triton.build.images import calibration_set, held_out_set
from resnet_triton.listing import label_regex
from resnet_triton.preprocess import crop, load_image
from resnet_triton.resnet import load_checkpoint
from resnet_triton.serving.repository import rendered_files
from resnet_triton.spec import IMAGENET_MEAN, IMAGENET_STD
from resnet_triton.training import evaluation
from resnet_triton.training.options import config_from_args, get_args_parser

RUN = [
    "--epochs", "1", "--batch-size", "8", "--resize-size", "36", "--crop-size", "32",
    "--workers", "0", "--weights", "none", "--arch", "resnet18", "--no-hflip",
    "--no-tensorboard",
]  # fmt: skip


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def images(root: Path, per_class: int = 4) -> Path:
    """root/img/{a,b}/{0..}.png: small images of two classes."""
    for label, shade in (("a", 30), ("b", 220)):
        for i in range(per_class):
            path = root / "img" / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (shade, i * 20, 255 - shade)).save(path)
    return root


def refusal(capsys, *flags: str) -> str:
    """The one line a refused `train` prints; it must exit 1."""
    assert cli.main(["train", *flags, *RUN]) == 1
    return capsys.readouterr().err.strip()


def test_a_manifest_with_a_missing_file_is_refused_naming_the_line(tmp_path, capsys):
    images(tmp_path)
    rows = [f"img/{c}/{i}.png,{c}" for c in "ab" for i in range(4)]
    rows.insert(5, "img/b/missing.png,b")  # line 7, after the header and 5 rows
    manifest = write_csv(tmp_path / "manifest.csv", ["path,label", *rows])
    err = refusal(capsys, "--data", str(manifest), "--out", str(tmp_path / "run"))
    assert err == f"error: {manifest} line 7: img/b/missing.png does not exist"
    assert not (tmp_path / "run").exists()


BAD_MANIFESTS = {
    "unknown split": (
        ["path,label,split", "img/a/0.png,a,train", "img/a/1.png,a,validation"],
        "line 3: split 'validation' is not one of train, val, test",
    ),
    "empty label": (
        ["path,label", "img/a/0.png,a", "img/a/1.png,a", "img/a/2.png, "],
        "line 4: img/a/2.png has an empty label",
    ),
    "no label column": (
        ["path,class", "img/a/0.png,a"],
        "line 1: the header ['path', 'class'] lacks the column(s) ['label']; a manifest's "
        "header names path, label and optionally split",
    ),
    "listed twice": (
        ["path,label", "img/a/0.png,a", "img/a/1.png,a", "img/b/0.png,b", "img/a/0.png,b"],
        "line 5: img/a/0.png is listed again (line 2)",
    ),
    "absolute path": (
        ["path,label", "/etc/passwd.png,a"],
        "line 2: /etc/passwd.png is absolute; paths are relative to the manifest",
    ),  # fmt: skip
    "not an image": (
        ["path,label", "img/a/notes.txt,a"],
        "line 2: img/a/notes.txt is not an image file (extensions .jpg, .jpeg, .png, .webp, "
        ".bmp, .gif)",
    ),
    "split on some lines": (
        ["path,label,split", "img/a/0.png,a,train", "img/a/1.png,a,"],
        "line 3: split '' is not one of train, val, test",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_bad_manifest_line_is_refused_naming_it(tmp_path, capsys, case):
    lines, cause = BAD_MANIFESTS[case]
    manifest = write_csv(images(tmp_path) / "manifest.csv", lines)
    assert refusal(capsys, "--data", str(manifest)) == f"error: {manifest} {cause}"


def test_json_lines_name_their_line_too(tmp_path, capsys):
    manifest = images(tmp_path) / "manifest.jsonl"
    lines = ['{"path": "img/a/0.png", "label": "a"}', "", '{"path": "img/a/1.png"', "[1]"]
    manifest.write_text("\n".join(lines) + "\n")
    assert refusal(capsys, "--data", str(manifest)) == (
        f"error: {manifest} line 3: not JSON (Expecting ',' delimiter at column 23)"
    )
    manifest.write_text('{"path": "img/a/0.png", "label": "a"}\n["img/a/1.png", "a"]\n')
    assert refusal(capsys, "--data", str(manifest)) == (
        f"error: {manifest} line 2: a JSON object with path and label expected, got "
        '["img/a/1.png", "a"]'
    )
    manifest.write_text('{"path": "img/a/0.png", "label": "a", "split": "train"}\n'
                        '{"path": "img/a/1.png", "label": "a"}\n')  # fmt: skip
    assert refusal(capsys, "--data", str(manifest)) == (
        f"error: {manifest} line 2: no split, but line 1 has one: give every line a split or none"
    )


def test_splits_that_cannot_be_drawn_are_refused(tmp_path, capsys):
    root = images(tmp_path)
    lines = ["path,label", *(f"img/a/{i}.png,a" for i in range(4)), "img/b/0.png,b"]
    manifest = write_csv(root / "few.csv", lines)
    assert refusal(capsys, "--data", str(manifest)) == (
        "error: classes ['b'] have fewer than 2 images; cannot split by ratio"
    )
    lines = [
        "path,label",
        *(f"img/a/{i}.png,a" for i in range(4)),
        *(f"img/b/{i}.png,b" for i in range(2)),
    ]
    manifest = write_csv(root / "two.csv", lines)
    assert refusal(capsys, "--data", str(manifest), "--test-split", "0.2") == (
        "error: classes ['b'] have fewer than 3 images; cannot split by ratio into train, "
        "val and test"
    )
    lines = ["path,label,split", "img/a/0.png,a,train", "img/b/0.png,b,train", "img/b/1.png,c,val"]
    manifest = write_csv(root / "split.csv", lines)
    assert refusal(capsys, "--data", str(manifest)) == (
        f"error: {manifest}: val images of classes ['c'], which no train image has; classes: a, b"
    )
    assert refusal(capsys, "--data", str(manifest), "--test-split", "0.1") == (
        f"error: --test-split 0.1 with {manifest}, whose split column places every image; "
        "leave --test-split out (or the column)"
    )
    assert refusal(capsys, "--data", str(root / "img"), "--test-split", "0.9") == (
        "error: --test-split must lie in [0, 1 - --val-split), got 0.9"
    )


def test_bad_label_patterns_are_refused_naming_the_pattern_or_the_files(tmp_path, capsys):
    flat = tmp_path / "flat"
    for name in ("cat_01.png", "cat_02.png", "dog_01.png", "dog_02.png", "Dog-3.png"):
        flat.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(flat / name)
    assert refusal(capsys, "--data", str(flat), "--label-pattern", "(") == (
        "error: --label-pattern '(' is no regular expression: missing ), unterminated "
        "subpattern at position 0"
    )
    assert refusal(capsys, "--data", str(flat), "--label-pattern", "[a-z]+_") == (
        "error: --label-pattern '[a-z]+_' has no group; mark the label as (?P<label>...) or "
        r"(...), e.g. '^(?P<label>[a-z]+)_\d+'"
    )
    assert refusal(capsys, "--data", str(flat), "--label-pattern", "^(?P<label>[a-z]+)_") == (
        f"error: --label-pattern '^(?P<label>[a-z]+)_' finds no label in 1 file name(s) of "
        f"{flat}: Dog-3.png"
    )


# -- runs ---------------------------------------------------------------------


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(phase, file) of every file read by path and every image opened from now on:
    "decode check" (every image decoded once before training), "final evaluation", and
    "training" for everything else (listing, statistics, epochs, validation)."""
    log, phase = [], ["training"]
    read_bytes, image_open = Path.read_bytes, PIL.Image.open

    def recording_read(path):
        log.append((phase[0], str(path)))
        return read_bytes(path)

    def recording_open(fp, *args, **kwargs):
        if isinstance(fp, str | Path):
            log.append((phase[0], str(fp)))
        return image_open(fp, *args, **kwargs)

    def in_phase(name, function):
        def run(*args, **kwargs):
            phase[0] = name
            try:
                return function(*args, **kwargs)
            finally:
                phase[0] = "training"

        return run

    monkeypatch.setattr(Path, "read_bytes", recording_read)
    monkeypatch.setattr(PIL.Image, "open", recording_open)
    monkeypatch.setattr(data, "find_bad_images", in_phase("decode check", data.find_bad_images))
    final = in_phase("final evaluation", evaluation.final_evaluation)
    monkeypatch.setattr(evaluation, "final_evaluation", final)
    return log


def digits_manifest(few_digits: Path, root: Path) -> tuple[Path, dict[str, list[str]]]:
    """root/digits.csv over a copy of the few digits: their train split as train, the first
    2 validation images of each class as val, the other 2 as test."""
    shutil.copytree(few_digits, root / "digits")
    lines, split = ["path,label,split"], {"train": [], "val": [], "test": []}
    for image in sorted((root / "digits").rglob("*.png")):
        name = image.parent.parent.name
        if name == "val":
            name = "val" if sorted(image.parent.iterdir()).index(image) < 2 else "test"
        lines.append(f"{image.relative_to(root)},{image.parent.name},{name}")
        split[name].append(str(image))
    return write_csv(root / "digits.csv", lines), split


@dataclass
class Run:
    out: Path
    split: dict[str, list[str]]  # the manifest's files by split
    reads: list[tuple[str, str]]  # record_reads'
    printed: list[str]


@pytest.fixture(scope="module")
def manifest_run(few_digits, tmp_path_factory) -> Run:
    """`train --data digits.csv --normalize data`, one epoch, every file read recorded."""
    root = tmp_path_factory.mktemp("manifest-run")
    manifest, split = digits_manifest(few_digits, root)
    flags = ["--data", str(manifest), "--out", str(root / "run"), "--normalize", "data"]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(printed):
        reads = record_reads(monkeypatch)
        assert cli.main(["train", *flags, *RUN]) == 0
    return Run(root / "run", split, reads, printed.getvalue().splitlines())


def test_a_manifest_run_reads_its_test_split_only_in_the_final_evaluation(manifest_run):
    run = manifest_run
    assert [len(run.split[s]) for s in ("train", "val", "test")] == [130, 20, 20]
    read = {phase: {path for p, path in run.reads if p == phase} for phase, _ in run.reads}
    test, seen = set(run.split["test"]), set(run.split["train"]) | set(run.split["val"])
    assert read["training"] & test == set()  # no loader, statistic or epoch saw them
    assert seen <= read["training"]  # the recorder sees what training reads
    assert test <= read["final evaluation"]
    assert read["decode check"] == test | seen  # decoded once, before anything trains
    evaluation_json = json.loads((run.out / "evaluation.json").read_text())
    assert (evaluation_json["split"], evaluation_json["images"]) == ("test", 20)
    assert any("130 train / 20 val / 20 test images, 10 classes" in s for s in run.printed)
    # The gates and INT8 calibration: the validation and training splits, never test.
    spec, _, payload = load_checkpoint(run.out / "checkpoint.pt")
    gates = held_out_set(spec, payload, run.out / "checkpoint.pt", None)
    assert sorted(gates.paths) == sorted(run.split["val"])
    calibration = calibration_set(spec, payload, run.out / "checkpoint.pt", None, 40)
    assert set(calibration) <= set(run.split["train"])


def expected_statistics(paths: list[str], prep) -> tuple[np.ndarray, np.ndarray]:
    crops = np.stack([crop(load_image(p, prep), prep) for p in paths]) / 255.0  # (N, H, W, 3)
    return crops.mean(axis=(0, 1, 2)), crops.std(axis=(0, 1, 2))


def test_normalize_data_puts_the_training_split_statistics_in_the_spec(manifest_run):
    spec, _, _ = load_checkpoint(manifest_run.out / "checkpoint.pt")
    prep, split = spec.preprocessing, manifest_run.split
    mean, std = expected_statistics(split["train"], prep)
    assert prep.mean == pytest.approx(mean, abs=5e-5) and prep.mean != IMAGENET_MEAN
    assert prep.std == pytest.approx(std, abs=5e-5) and prep.std != IMAGENET_STD
    everything = expected_statistics(sum(split.values(), []), prep)
    assert np.abs(everything[0] - mean).max() > 1e-4  # of the train split, not all images
    assert (
        f"normalization from the 130 training images: mean {list(prep.mean)}, "
        f"std {list(prep.std)} (in the spec: the server normalizes with them too)"
    ) in manifest_run.printed
    config = rendered_files(spec)[f"{spec.names.preprocess}/config.pbtxt"]
    for key in ("mean", "std"):  # what the server's preprocess model normalizes with
        value = json.dumps(list(getattr(prep, key)))
        assert f'key: "{key}"\n  value {{\n    string_value: "{value}"' in config


def renamed_digits(few_digits: Path, root: Path) -> Path:
    """One flat folder of the few digits, the class in each name: digit3_0017.png."""
    root.mkdir()
    for image in sorted(few_digits.rglob("*.png")):
        shutil.copy(
            image, root / f"digit{image.parent.name}_{image.parent.parent.name}_{image.name}"
        )
    return root


def test_labels_from_file_names_with_a_test_split_drawn_first(few_digits, tmp_path, capsys):
    flat = renamed_digits(few_digits, tmp_path / "flat")
    out = tmp_path / "run"
    pattern = r"^digit(?P<label>\d)_"
    flags = ["--data", str(flat), "--label-pattern", pattern, "--test-split", "0.1"]
    assert cli.main(["train", *flags, "--out", str(out), *RUN]) == 0
    # 170 images: a stratified 10% test share (17), then 20% of all for val (34).
    assert "119 train / 34 val / 17 test images, 10 classes" in capsys.readouterr().out
    evaluation_json = json.loads((out / "evaluation.json").read_text())
    assert (evaluation_json["split"], evaluation_json["images"]) == ("test", 17)
    spec, _, payload = load_checkpoint(out / "checkpoint.pt")
    assert spec.labels == tuple(str(d) for d in range(10))
    assert payload["config"]["label_pattern"] == pattern
    # Build draws the split again from the recorded config: val, never a test image.
    train, val, test = data.list_splits(flat, spec.preprocessing, 0.2, 0, 0.1, pattern)
    gates = held_out_set(spec, payload, out / "checkpoint.pt", None)
    assert sorted(gates.paths) == sorted(p for p, _ in val.samples)
    assert {p for p, _ in test.samples}.isdisjoint(gates.paths)
    # The test share stays when --val-split changes; val and test never overlap.
    other = data.list_splits(flat, spec.preprocessing, 0.3, 0, 0.1, pattern)
    assert other[2].samples == test.samples
    assert {p for p, _ in other[1].samples}.isdisjoint(p for p, _ in test.samples)


def test_the_documented_commands_parse_as_typed():
    readme = (Path(__file__).parents[2] / "train" / "README.md").read_text()
    section = readme.split("### Manifests, labels from file names, a test split")[1]
    commands = section.split("```bash\n")[1].split("```")[0].replace("\\\n", "")
    configs = []
    for line in commands.strip().splitlines():
        words = shlex.split(line)
        assert words[:2] == [".venv/bin/resnet-triton", "train"]
        configs.append(config_from_args(get_args_parser().parse_args(words[2:])))
    assert [(c.data, c.label_pattern, c.test_split, c.normalize) for c in configs] == [
        ("my_data/images.csv", None, 0.0, "imagenet"),
        ("my_photos", r"^(?P<label>[A-Za-z_]+)_\d+\.jpg$", 0.1, "data"),
    ]
    regex = label_regex(configs[1].label_pattern)
    assert regex.search("great_pyrenees_173.jpg")["label"] == "great_pyrenees"
    assert regex.search("Abyssinian_100.jpg")["label"] == "Abyssinian"


def test_int8_calibrates_on_a_manifest_and_never_on_the_runs_held_out_images(
    manifest_run, tmp_path, capsys
):
    """`build --calibration MANIFEST`: another manifest calibrates on every image it lists;
    the run's own manifest gives its training split, as no --calibration does; a bad line
    is refused through the CLI, naming the line and the flag, before anything is built."""
    run = manifest_run
    checkpoint = run.out / "checkpoint.pt"
    spec, _, payload = load_checkpoint(checkpoint)
    own = calibration_set(spec, payload, checkpoint, run.out.parent / "digits.csv", 40)
    assert own == calibration_set(spec, payload, checkpoint, None, 40)
    assert len(own) == 40 and set(own) <= set(run.split["train"])

    lines = ["path,label"]
    for image in run.split["test"]:  # 20 images the run never trained on, copied
        copy = tmp_path / "cal" / Path(image).parent.name / Path(image).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, copy)
        lines.append(f"{copy.relative_to(tmp_path)},{copy.parent.name}")
    other = write_csv(tmp_path / "other.csv", lines)
    listed = [str(tmp_path / line.split(",")[0]) for line in lines[1:]]
    assert sorted(calibration_set(spec, payload, checkpoint, other, 20)) == sorted(listed)

    write_csv(other, [*lines, "cal/3/missing.png,3"])
    flags = ["--checkpoint", str(checkpoint), "--repository", str(tmp_path / "repo"),
             "--work-dir", str(tmp_path / "work"), "--precision=int8",
             "--calibration", str(other)]  # fmt: skip
    assert cli.main(["build", *flags]) == 1
    assert capsys.readouterr().err == (
        f"error: {other} line 22: cal/3/missing.png does not exist "
        "(--calibration DIR or MANIFEST: images for INT8)\n"
    )
    assert not (tmp_path / "repo").exists() and not (tmp_path / "work").exists()
