"""Every expected failure is one line on stderr and exit code 1 (2 for usage)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_triton.cli import main
from resnet_triton.serving.repository import renumber


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_every_stage(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("train", "build", "render", "serve", "classify", "demo"):
        assert f"  {command} " in out


def test_unknown_command(capsys):
    code, _, err = run_cli(capsys, "deploy")
    assert code == 2
    assert "unknown command 'deploy'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "{tmp}/nothing"], "data folder {tmp}/nothing does not exist"),
        (
            ["train", "--data", "{tmp}", "--arch", "resnet5"],
            "unknown architecture 'resnet5'; choose one of resnet18, resnet34, resnet50",
        ),
        (["build", "--checkpoint", "{tmp}/ckpt.pt"], "cannot load {tmp}/ckpt.pt"),
        (
            ["build", "--checkpoint", "{tmp}/missing.pt"],
            "checkpoint {tmp}/missing.pt does not exist",
        ),
        (["classify", "{tmp}/none.png"], "{tmp}/none.png is neither a file nor a folder"),
        (["serve", "--repository", "{tmp}/repo"], "model repository {tmp}/repo does not exist"),
        (["explain", "--checkpoint", "{tmp}/ckpt.pt", "{tmp}"], "cannot load {tmp}/ckpt.pt"),
        (["ui", "--top-k", "0"], "--top-k must be at least 1, not 0"),
        (
            ["calibrate", "--checkpoint", "{tmp}/ckpt.pt", "--data", "{tmp}", "--frr", "0.7"],
            "--frr must lie in (0, 0.5), got 0.7",
        ),
        (["calibrate", "--checkpoint", "{tmp}/ckpt.pt", "--data", "{tmp}"], "cannot load"),
        (["distill", "--data", "{tmp}", "--teacher", "t.pt"], "Couldn't find any class folder"),
        (["ui", "--checkpoint", "{tmp}/ckpt.pt"], "cannot load {tmp}/ckpt.pt"),
        (["ui", "--url", "localhost:1"], "cannot reach Triton at localhost:1 (grpc)"),
    ],
)
def test_user_errors_are_one_line(capsys, tmp_path, argv, message):
    (tmp_path / "ckpt.pt").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 1
    assert err.startswith("error: ")
    assert message.format(tmp=tmp_path) in err
    assert err.count("\n") == 1


def test_serve_refuses_a_repository_without_a_model(capsys, tmp_path):
    assert main(["render", "--demo", "--repository", str(tmp_path)]) == 0
    code, _, err = run_cli(capsys, "serve", "--repository", str(tmp_path))
    assert code == 1
    assert f"{tmp_path}/classifier/1/model.onnx does not exist; publish a model first" in err
    renumber(tmp_path, 4)  # a kept store version: Triton serves the highest number
    code, _, err = run_cli(capsys, "serve", "--repository", str(tmp_path))
    assert f"{tmp_path}/classifier/4/model.onnx does not exist; publish a model first" in err


def test_serve_names_a_bad_execution_env_path(capsys, tmp_path):
    assert main(["render", "--demo", "--repository", str(tmp_path), "--env-path", "/no/venv"]) == 0
    code, _, err = run_cli(capsys, "serve", "--repository", str(tmp_path))
    assert code == 1
    assert "classifier/config.pbtxt: parameter EXECUTION_ENV_PATH resolves to /no/venv" in err


def test_build_refuses_a_checkpoint_of_another_kind(capsys, tmp_path):
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    code, _, err = run_cli(capsys, "build", "--checkpoint", str(tmp_path / "other.pt"))
    assert code == 1
    assert "is not a resnet-triton checkpoint" in err


@pytest.mark.parametrize(
    ("script", "command"),
    [("train/train.py", "train"), ("build/build.py", "build"), ("build/pipeline.py", "pipeline")],
)
def test_the_stage_folders_hold_thin_entry_points(script, command):
    root = Path(__file__).parent.parent
    result = subprocess.run([sys.executable, str(root / script), "--help"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: resnet-triton {command} ")


def test_the_client_commands_start_without_a_warning():
    """tritonclient 2.51's shared-memory module warns that pkg_resources is deprecated
    when imported; the client keeps that off the user's terminal (client/shm.py)."""
    result = subprocess.run([sys.executable, "-m", "resnet_triton", "classify", "--help"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0 and result.stdout.startswith("usage: resnet-triton classify")
    assert result.stderr == ""
