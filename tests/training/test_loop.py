import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from resnet_triton.data import EvalTransform
from resnet_triton.preprocess import load_image
from resnet_triton.resnet import CheckpointError, build_model, load_checkpoint
from resnet_triton.spec import ModelSpec
from resnet_triton.training import TrainConfig, run, strategy
from resnet_triton.training.config import resolve
from resnet_triton.training.distributed import Context
from resnet_triton.training.loop import Trainer

# Small and fast: 32x32 inputs; the digits are still learnt in a few epochs.
TINY = {
    "resize_size": 36,
    "crop_size": 32,
    "workers": 0,
    "weights": "none",
    "arch": "resnet18",
    "hflip": False,
    "lr": 3e-3,
}
TIMING = ("seconds", "train_images_per_s")


def test_trained_checkpoint_carries_spec_metrics_and_config(checkpoint):
    spec, _, payload = load_checkpoint(checkpoint)
    assert spec.labels == tuple(str(d) for d in range(10))
    assert spec.preprocessing.crop_size == 64
    assert payload["config"]["epochs"] == 3
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert payload["metrics"] == metrics["best"]
    # 3 epochs from random weights at 64x64 px: the digits are easy enough.
    assert metrics["best"]["val_top1"] >= 0.9


def test_outputs_are_written(checkpoint):
    out = checkpoint.parent
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["split"] == "val" and evaluation["images"] == 360
    assert set(evaluation["per_class"]) == {str(d) for d in range(10)}
    assert sum(c["support"] for c in evaluation["per_class"].values()) == 360
    assert np.array(evaluation["confusion_matrix"]).sum() == 360
    best = json.loads((out / "metrics.json").read_text())["best"]
    assert evaluation["top1"] == pytest.approx(best["val_top1"], abs=1e-9)
    assert evaluation["figures"] == {
        "curves": "curves.png", "confusion_matrix": "confusion_matrix.png",
        "mistakes": "mistakes.png", "examples": "examples.png",
    }  # fmt: skip
    for name in evaluation["figures"].values():
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    assert resolve(out / "config.yaml", {}).epochs == 3
    assert (out / "last.pt").is_file()


def test_the_report_shows_the_most_confident_mistakes_and_examples(checkpoint):
    evaluation = json.loads((checkpoint.parent / "evaluation.json").read_text())
    analysis = evaluation["error_analysis"]
    matrix = np.array(evaluation["confusion_matrix"])  # of val: the digits have no test split
    assert analysis["split"] == "val"
    assert analysis["mistakes_total"] == matrix.sum() - np.trace(matrix) > 0
    mistakes = analysis["mistakes"]
    assert len(mistakes) == min(16, analysis["mistakes_total"])
    scores = [m["score"] for m in mistakes]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    for m in mistakes:
        assert m["true"] != m["predicted"] and Path(m["file"]).parent.name == m["true"]
    spec, model, _ = load_checkpoint(checkpoint)
    top = mistakes[0]
    image = EvalTransform(spec.preprocessing)(load_image(top["file"]))
    with torch.no_grad():
        probs = torch.softmax(model(image[None]), 1)[0]
    assert str(int(probs.argmax())) == top["predicted"]
    assert float(probs.max()) == pytest.approx(top["score"], abs=1e-5)
    assert set(analysis["examples"]) == {str(d) for d in range(10)}
    for label, files in analysis["examples"].items():
        assert 1 <= len(files) <= 4 and all(Path(f).parent.name == label for f in files)


def history(out):
    records = json.loads((out / "metrics.json").read_text())["history"]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_resume_gives_the_uninterrupted_result(few_digits, tmp_path):
    """Tolerance: losses within 1e-5, accuracies equal. Seen: identical to print precision."""
    base = {"data": str(few_digits), "epochs": 3, "ema_decay": 0.9, "head_dropout": 0.2, **TINY}
    run(TrainConfig(out=str(tmp_path / "straight"), **base))
    run(TrainConfig(out=str(tmp_path / "split"), stop_after=1, **base))
    assert len(history(tmp_path / "split")) == 1
    assert not (tmp_path / "split" / "evaluation.json").exists()  # not finished yet
    last = tmp_path / "split" / "last.pt"
    run(TrainConfig(out=str(tmp_path / "split"), resume=str(last), **base))

    straight, resumed = history(tmp_path / "straight"), history(tmp_path / "split")
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed, strict=True):
        assert a["val_top1"] == b["val_top1"]
        for key in ("train_loss", "val_loss", "lr_head", "lr_backbone"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_resume_refuses_another_class_set(digits, tmp_path):
    spec = ModelSpec(labels=("cat", "dog"), arch="resnet18")
    from resnet_triton.resnet import save_checkpoint

    save_checkpoint(tmp_path / "last.pt", build_model(spec), spec, training={})
    cfg = TrainConfig(
        data=str(digits), out=str(tmp_path / "o"), resume=str(tmp_path / "last.pt"), **TINY
    )
    with pytest.raises(
        CheckpointError, match=r"is resnet18 with classes \['cat', 'dog'\]; this run"
    ):
        run(cfg)


def test_early_stopping_stops_when_the_metric_stalls(few_digits, tmp_path):
    # lr 0 and BatchNorm frozen: neither the weights nor the statistics change, so val
    # top-1 never improves after epoch 1.
    cfg = TrainConfig(data=str(few_digits), out=str(tmp_path), epochs=5, patience=2,
                      freeze_bn=True, **{**TINY, "lr": 0.0})  # fmt: skip
    result = run(cfg)
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3]
    assert result["best"]["epoch"] == 1
    assert result["evaluation"]["split"] == "val"


def imbalanced(root, counts):
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (12, 12), (10 * i, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_class_balance(tmp_path):
    data = imbalanced(tmp_path / "data", {"common": 60, "rare": 15})
    base = {"data": str(data), "out": str(tmp_path / "o"), "val_split": 0.2, **TINY}
    trainer = Trainer(TrainConfig(class_balance="loss", **base), Context())
    # 48 and 12 train images after the stratified 80/20 split: weight n / (k * count).
    assert trainer.loss_fn.weight.tolist() == pytest.approx([60 / (2 * 48), 60 / (2 * 12)])

    trainer = Trainer(TrainConfig(class_balance="sampler", **base), Context())
    trainer.data.shuffle.manual_seed(0)
    drawn = np.array(trainer.splits.train.targets)[list(trainer.data.sampler)]
    assert len(drawn) == 60
    assert 0.35 <= drawn.mean() <= 0.65  # the rare class drawn about half the time


def test_accumulation_takes_one_optimizer_step_per_group(tmp_path):
    data = imbalanced(tmp_path / "data", {"a": 20, "b": 20})
    cfg = TrainConfig(
        data=str(data), out=str(tmp_path / "o"), batch_size=4, accumulate=3, epochs=1,
        schedule="step", **TINY,
    )  # fmt: skip
    trainer = Trainer(cfg, Context())
    forwards, steps = [], []
    trainer.model.register_forward_pre_hook(lambda module, args: forwards.append(len(args[0])))
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(len(forwards)))
    trainer.fit()
    # 32 train images in batches of 4 = 8 micro-batches -> 2 whole groups of 3; the 2
    # left over are not trained on.
    assert trainer.steps_per_epoch == 2
    assert steps == [3, 6] and forwards[:6] == [4] * 6
    assert trainer.schedule.scheduler.last_epoch == 2
    assert torch.isfinite(next(trainer.model.parameters())).all()


# What each training switch does. A trainer on the tiny two-class folder, ready to step
# as train_epoch leaves it.
SWITCHES = {
    "optimizer": "sgd", "nesterov": True, "clip_grad_norm": 0.05, "label_smoothing": 0.1,
    "rrc_scale": (0.5, 0.9), "color_jitter": 0.3, "rotation": 10.0, "blur": 0.5,
    "auto_augment": "randaugment",
}  # fmt: skip


def switched(tmp_path, **changes) -> Trainer:
    data = imbalanced(tmp_path / "data", {"a": 20, "b": 20})
    settings = {**TINY, **SWITCHES, **changes}
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "o"), batch_size=8, **settings)
    trainer = Trainer(cfg, Context())
    trainer.set_stage(0)
    strategy.set_train_mode(trainer.model, cfg, 0)
    return trainer


def grad_norm(optimizer: torch.optim.Optimizer) -> float:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None])))


def test_clipping_bounds_the_gradient_norm_the_optimizer_steps_on(tmp_path):
    norms = {}
    for clip in (0.0, 0.05):
        trainer = switched(tmp_path / f"clip{clip}", clip_grad_norm=clip)
        seen = norms.setdefault(clip, [])
        trainer.optimizer.register_step_pre_hook(
            lambda opt, *_, seen=seen: seen.append(grad_norm(opt))
        )
        images, labels = next(iter(trainer.data.loader))
        trainer.step(images, labels, stepping=True)
    assert norms[0.0][0] > 10 * 0.05  # unclipped: the bound has work to do
    # clip_grad_norm_ scales by clip / (norm + 1e-6).
    assert norms[0.05] == [pytest.approx(0.05, rel=1e-4)]


def test_the_loss_is_label_smoothed(tmp_path):
    trainer = switched(tmp_path, amp=False)  # float32, for a close comparison
    images, labels = next(iter(trainer.data.loader))
    with torch.no_grad():  # train mode: batch statistics, as in the step
        logits = trainer.model(images.to(memory_format=torch.channels_last))
    smoothed = F.cross_entropy(logits, labels, label_smoothing=0.1).item()
    plain = F.cross_entropy(logits, labels).item()
    # The same float32 operations: seen equal. Two classes at random weights are near a
    # tie, so the smoothing moves the loss little (seen 8e-4 relative), but 800x the bound.
    assert trainer.step(images, labels, stepping=False) == pytest.approx(smoothed, rel=1e-6)
    assert plain != pytest.approx(smoothed, rel=1e-6)


def test_nesterov_momentum_reaches_the_optimizer(tmp_path):
    optimizer = switched(tmp_path).optimizer
    assert type(optimizer) is torch.optim.SGD
    assert {(g["momentum"], g["nesterov"]) for g in optimizer.param_groups} == {(0.9, True)}


@pytest.mark.parametrize(
    "changes, flip, auto",
    [
        ({}, [], T.RandAugment),  # SWITCHES: no flip (TINY's hflip is off)
        ({"hflip": True, "auto_augment": "autoaugment"}, [T.RandomHorizontalFlip], T.AutoAugment),
    ],
)
def test_the_train_split_is_augmented_as_configured(tmp_path, changes, flip, auto):
    trainer = switched(tmp_path, **changes)
    steps = trainer.splits.train.transform.transforms
    classes = [T.RandomResizedCrop, *flip, T.RandomRotation, T.ColorJitter, T.RandomApply, auto,
               T.ToTensor, T.Normalize]  # fmt: skip
    assert [type(step) for step in steps] == classes
    if flip:
        assert steps[1].p == 0.5
    crop, rotation, jitter, blur, augment, _, normalize = [steps[0], *steps[1 + len(flip) :]]
    bilinear = T.InterpolationMode.BILINEAR  # the spec's, also where torchvision's is nearest
    assert (crop.size, crop.scale, crop.interpolation) == ((32, 32), (0.5, 0.9), bilinear)
    assert (rotation.degrees, rotation.interpolation) == ([-10.0, 10.0], bilinear)
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.7, 1.3)
    assert jitter.hue is None
    (gaussian,) = blur.transforms
    assert (blur.p, gaussian.kernel_size, gaussian.sigma) == (0.5, (5, 5), (0.1, 2.0))
    assert augment.interpolation == bilinear
    spec = trainer.spec.preprocessing
    assert (normalize.mean, normalize.std) == (spec.mean, spec.std)
    assert type(trainer.splits.val.transform) is EvalTransform  # no augmentation


def test_without_augmentation_the_crop_is_all_there_is(tmp_path):
    trainer = switched(tmp_path, rrc_scale=(1.0, 1.0), color_jitter=0.0, rotation=0.0, blur=0.0,
                       auto_augment="none")  # fmt: skip
    steps = trainer.splits.train.transform.transforms
    assert [type(step) for step in steps] == [T.RandomResizedCrop, T.ToTensor, T.Normalize]


def test_a_step_skipped_for_overflow_leaves_the_schedule_and_the_ema(tmp_path):
    """The loop's skip logic on CPU: GradScaler("cpu") skips a step whose gradients are
    not finite (here made infinite by a hook) and backs off, as the CUDA scaler does with
    fp16 overflow (test_gpu_training.py)."""
    trainer = switched(tmp_path, ema_decay=0.9)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # the loop's is CUDA's
    images, labels = next(iter(trainer.data.loader))
    weights = trainer.model.fc.weight.detach().clone()
    hook = trainer.model.fc.weight.register_hook(lambda grad: torch.full_like(grad, torch.inf))
    trainer.step(images, labels, stepping=True)
    hook.remove()
    assert trainer.scaler.get_scale() == 2.0**9  # skipped and backed off
    assert torch.equal(trainer.model.fc.weight, weights)
    assert trainer.schedule.scheduler.last_epoch == 0  # warm-up has not moved on
    assert int(trainer.ema.n_averaged) == 0
    trainer.step(images, labels, stepping=True)
    assert trainer.scaler.get_scale() == 2.0**9
    assert not torch.equal(trainer.model.fc.weight, weights)
    assert trainer.schedule.scheduler.last_epoch == 1
    assert int(trainer.ema.n_averaged) == 1


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_reaches_the_weights_and_the_inputs(tmp_path, channels_last):
    trainer = switched(tmp_path, channels_last=channels_last)
    inputs = []
    trainer.model.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    images, labels = next(iter(trainer.data.loader))
    trainer.step(images, labels, stepping=True)
    layout = torch.channels_last
    assert trainer.model.conv1.weight.is_contiguous(memory_format=layout) is channels_last
    assert inputs[0].is_contiguous(memory_format=layout) is channels_last
