"""Training on a CUDA GPU: fp16 autocast with loss scaling and channels_last learn the
digits, resume restores the loss scale, and a GPU-trained checkpoint serves on a CPU host.

Runs where a GPU is lent, without the shared fixtures (they start Triton, which a
training machine need not have):

    pytest --noconftest -m gpu tests/training/test_gpu_training.py
"""

import json

import pytest
import test_loop
import torch

from resnet_triton.digits import write_digits
from resnet_triton.resnet import load_checkpoint, read_torch_file
from resnet_triton.training import TrainConfig, run
from resnet_triton.training.distributed import Context
from resnet_triton.training.loop import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TINY = {**test_loop.TINY, "epochs": 3}  # test_loop's small digits run


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits(root)
    return root


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    run(TrainConfig(data=str(digits), out=str(out), **TINY))  # amp and channels_last: defaults
    return out


def test_fp16_with_loss_scaling_learns_the_digits(trained):
    best = json.loads((trained / "metrics.json").read_text())["best"]
    assert best["val_top1"] >= 0.9
    scaler = read_torch_file(trained / "last.pt")["training"]["scaler"]
    assert scaler["scale"] > 0  # GradScaler ran (on CPU it is off and saves {})


def test_the_model_trains_in_channels_last_on_the_gpu(digits, tmp_path):
    cfg = TrainConfig(data=str(digits), out=str(tmp_path), **TINY)
    trainer = Trainer(cfg, Context(device=torch.device("cuda")))
    weight = trainer.model.conv1.weight
    assert weight.is_cuda and weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.precision.dtype == torch.float16 and trainer.scaler.is_enabled()


def test_resume_restores_the_loss_scale(digits, trained, tmp_path):
    payload = read_torch_file(trained / "last.pt")
    payload["training"]["scaler"]["scale"] = 1024.0  # not GradScaler's initial 65536
    torch.save(payload, tmp_path / "last.pt")
    cfg = TrainConfig(data=str(digits), out=str(tmp_path / "out"), **TINY)
    trainer = Trainer(cfg, Context(device=torch.device("cuda")))
    trainer.resume(tmp_path / "last.pt")
    assert trainer.scaler.get_scale() == 1024.0
    assert trainer.state.epoch == 3


def test_resume_on_the_gpu_gives_the_uninterrupted_result(digits, trained, tmp_path):
    """The CPU test's tolerance: losses within 1e-5, accuracies equal. Seen on an H200:
    identical to print precision (cuDNN picked deterministic kernels)."""
    base = {"data": str(digits), **TINY}
    run(TrainConfig(out=str(tmp_path), stop_after=1, **base))
    run(TrainConfig(out=str(tmp_path), resume=str(tmp_path / "last.pt"), **base))
    straight = json.loads((trained / "metrics.json").read_text())["history"]
    resumed = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(straight, resumed, strict=True):
        assert a["val_top1"] == b["val_top1"]
        for key in ("train_loss", "val_loss", "lr_head", "lr_backbone"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_a_step_skipped_for_overflow_leaves_the_schedule_and_the_ema(digits, tmp_path):
    cfg = TrainConfig(data=str(digits), out=str(tmp_path), ema_decay=0.9, **TINY)
    trainer = Trainer(cfg, Context(device=torch.device("cuda")))
    trainer.set_stage(0)
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 2.0**100})
    images, labels = next(iter(trainer.data.loader))
    weights = trainer.model.fc.weight.detach().clone()
    trainer.step(images, labels, stepping=True)  # fp16 gradients times 2**100 overflow
    assert trainer.scaler.get_scale() == 2.0**99  # skipped and backed off
    assert torch.equal(trainer.model.fc.weight, weights)
    assert trainer.schedule.scheduler.last_epoch == 0  # warm-up has not moved on
    assert int(trainer.ema.n_averaged) == 0
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 1.0})
    trainer.step(images, labels, stepping=True)
    assert not torch.equal(trainer.model.fc.weight, weights)
    assert trainer.schedule.scheduler.last_epoch == 1
    assert int(trainer.ema.n_averaged) == 1


def test_a_gpu_trained_checkpoint_gives_the_same_logits_on_cpu(digits, trained):
    spec, model, _ = load_checkpoint(trained / "checkpoint.pt")  # on the CPU, as build reads it
    images = torch.rand(8, 3, spec.preprocessing.crop_size, spec.preprocessing.crop_size)
    # Full fp32 convolutions on the GPU for the comparison (TF32 is cuDNN's default).
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        on_cpu = model(images)
        on_gpu = model.to("cuda")(images.to("cuda")).cpu()
    assert next(iter(model.state_dict().values())).is_cuda  # it did run on the GPU
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)
