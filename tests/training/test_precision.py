"""The precision a run trains in (training/precision.py): with --amp unset, bf16 autocast
on a CPU whose oneDNN has bfloat16 kernels and FP32 on one without (where bf16 is
emulated, 14x slower on this AVX2 EPYC), fp16 on CUDA; --amp and --no-amp win. The
detection is stubbed to take both branches on any CPU; the decision, the autocast the
steps run under, the one line saying so and what the run records are the code's own."""

import json

import pytest
import torch
import yaml

from resnet_triton.training import TrainConfig, get_args_parser, precision
from resnet_triton.training.config import resolve
from resnet_triton.training.distributed import Context
from resnet_triton.training.loop import Trainer
from resnet_triton.training.options import config_from_args

TINY = {"arch": "resnet18", "weights": "none", "epochs": 1, "resize_size": 36,
        "crop_size": 32, "workers": 0, "hflip": False, "tensorboard": False}  # fmt: skip
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # CUDA: a device name, no GPU needed
NATIVE = "precision: bf16 autocast (oneDNN has bfloat16 kernels for this CPU; --no-amp for fp32)"
EMULATED = (
    "precision: fp32 (this CPU has no bfloat16 kernels in oneDNN (AVX-512, AVX-NE-CONVERT or "
    "AMX): bf16 autocast would be emulated, about 14x slower; --amp forces it)"
)


@pytest.mark.parametrize(
    ("amp", "native", "dtype", "name"),
    [(None, True, torch.bfloat16, "bf16"), (None, False, None, "fp32"),
     (True, False, torch.bfloat16, "bf16"), (True, True, torch.bfloat16, "bf16"),
     (False, True, None, "fp32"), (False, False, None, "fp32")],
)  # fmt: skip
def test_the_cpu_decision(monkeypatch, amp, native, dtype, name):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    chosen = precision.resolve(amp, CPU)
    assert (chosen.dtype, chosen.enabled, chosen.name) == (dtype, dtype is not None, name)
    # Only a forced bf16 that oneDNN emulates is warned about.
    assert (chosen.warning is not None) == (amp is True and not native)


def test_cuda_takes_fp16_with_loss_scaling_unless_told_not_to(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)  # CUDA's choice asks no CPU
    assert precision.resolve(None, CUDA).dtype == torch.float16
    assert precision.resolve(True, CUDA).dtype == torch.float16
    assert precision.resolve(False, CUDA).dtype is None


def test_the_flags_are_a_tri_state():
    parse = lambda *flags: config_from_args(get_args_parser().parse_args(["--data=d", *flags]))  # noqa: E731
    assert [parse().amp, parse("--amp").amp, parse("--no-amp").amp] == [None, True, False]
    help_text = " ".join(get_args_parser().format_help().split())
    assert "said in one line (default: unset)" in help_text


@pytest.mark.parametrize(
    ("amp", "native", "dtype", "line", "warned"),
    [(None, True, torch.bfloat16, NATIVE, False),
     (None, False, torch.float32, EMULATED, False),
     (True, False, torch.bfloat16, "precision: bf16 autocast (--amp)", True),
     (False, True, torch.float32, "precision: fp32 (--no-amp)", False)],
)  # fmt: skip
def test_the_steps_run_in_the_chosen_precision_said_in_one_line(
    few_digits, tmp_path, monkeypatch, capsys, amp, native, dtype, line, warned
):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    cfg = TrainConfig(data=str(few_digits), out=str(tmp_path), amp=amp, **TINY)
    trainer = Trainer(cfg, Context())
    trainer.set_stage(0)
    stepped = []
    trainer.model.register_forward_hook(lambda module, inputs, logits: stepped.append(logits))
    images, labels = next(iter(trainer.data.loader))
    trainer.step(images, labels, stepping=True)
    assert [logits.dtype for logits in stepped] == [dtype]
    trainer.precision.say()
    said = capsys.readouterr()
    assert [s for s in said.out.splitlines() if s.startswith("precision:")] == [line]
    assert said.err.count("warning: --amp on a CPU without bfloat16 kernels") == int(warned)


def test_a_run_says_its_precision_once_and_records_it(few_digits, tmp_path, monkeypatch, capsys):
    """This CPU's branch (no bfloat16 kernels), stubbed so on any CPU: a whole run."""
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(few_digits), out=str(out), **TINY)
    Trainer(cfg, Context()).fit()
    said = capsys.readouterr().out.splitlines()
    assert [s for s in said if s.startswith("precision:")] == [EMULATED]
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [r["precision"] for r in history] == ["fp32"]
    assert json.loads((out / "evaluation.json").read_text())["precision"] == "fp32"
    # config.yaml replays the run as asked (amp unset: follow the machine), the choice
    # being recorded above; on a CPU with bfloat16 kernels the replay takes bf16.
    assert yaml.safe_load((out / "config.yaml").read_text())["amp"] is None
    assert resolve(out / "config.yaml", {}) == cfg
