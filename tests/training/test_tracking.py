"""Run tracking (training/tracking.py), read back with each tool's own reader:
TensorBoard's event accumulator, and MLflow's client on a file store and on a real
`mlflow server` process."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resnet_triton.serving.server import Ports
from resnet_triton.training import TrainConfig, run
from resnet_triton.training.tracking import EXPERIMENT, FIGURES, SCALARS

TINY = {"resize_size": 36, "crop_size": 32, "workers": 0, "weights": "none",
        "arch": "resnet18", "hflip": False, "lr": 3e-3, "epochs": 2}  # fmt: skip


def history(out: Path) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())["history"]


def logged_run(uri: str, out: Path):
    """The MLflow run of the training run in `out`, with its client."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (found,) = client.search_runs([experiment.experiment_id],
                                  filter_string=f"attributes.run_name = '{out.name}'")  # fmt: skip
    return client, found


def check_mlflow_run(client: MlflowClient, found, out: Path, tmp_path: Path) -> None:
    assert found.info.status == "FINISHED"
    params = found.data.params
    assert (params["arch"], params["lr"], params["epochs"]) == ("resnet18", "0.003", "2")
    assert params["stage_epochs"] == "[2, 2]"
    records = history(out)
    for key in SCALARS:
        logged = client.get_metric_history(found.info.run_id, key)
        assert [m.step for m in logged] == [r["epoch"] for r in records], key
        assert [m.value for m in logged] == pytest.approx([r[key] for r in records]), key
    names = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert names == {*(f"{f}.png" for f in FIGURES), "metrics.json", "evaluation.json",
                     "config.yaml", "checkpoint.pt"}  # fmt: skip
    copy = Path(client.download_artifacts(found.info.run_id, "checkpoint.pt", str(tmp_path)))
    assert copy.read_bytes() == (out / "checkpoint.pt").read_bytes()
    assert torch.load(copy, map_location="cpu", weights_only=False)["spec"]["arch"] == "resnet18"


def check_tensorboard(out: Path, epochs: int = 2) -> None:
    """Every epoch's scalars, the figures and the config, read by TensorBoard's reader."""
    events = EventAccumulator(str(out), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == set(SCALARS.values())
    for record in history(out):
        for key, tag in SCALARS.items():
            (point,) = [e for e in events.Scalars(tag) if e.step == record["epoch"]]
            assert point.value == pytest.approx(record[key], rel=1e-6), tag
    # 1.0 on a CPU: loss scaling is fp16's (CUDA)
    assert [e.value for e in events.Scalars("amp/loss_scale")] == [1.0] * epochs
    assert set(tags["images"]) == {f"figures/{name}" for name in FIGURES}
    (image,) = events.Images("figures/confusion_matrix")
    assert image.step == epochs and image.width > 200 and image.height > 200
    (config,) = events.Tensors("config/text_summary")
    assert "arch: resnet18" in config.tensor_proto.string_val[0].decode()


def test_tensorboard_and_an_mlflow_file_store_hold_the_run(few_digits, tmp_path):
    out, store = tmp_path / "run-a", tmp_path / "mlruns"  # a folder, as --mlflow mlruns
    run(TrainConfig(data=str(few_digits), out=str(out), mlflow=str(store), **TINY))
    check_tensorboard(out)
    client, found = logged_run(f"sqlite:///{store / 'mlflow.db'}", out)  # what it holds
    check_mlflow_run(client, found, out, tmp_path / "download")
    assert (store / "artifacts" / found.info.run_id / "artifacts" / "checkpoint.pt").is_file()


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(few_digits, tmp_path):
    out, store = tmp_path / "run-b", f"sqlite:///{tmp_path / 'runs.db'}"  # artifacts beside
    base = {"data": str(few_digits), "out": str(out), "mlflow": store, **TINY}
    run(TrainConfig(stop_after=1, **base))
    client, found = logged_run(store, out)
    assert found.info.status == "RUNNING"  # its time slot ended; the run goes on later
    run(TrainConfig(resume=str(out / "last.pt"), **base))
    client, again = logged_run(store, out)
    assert again.info.run_id == found.info.run_id
    check_mlflow_run(client, again, out, tmp_path / "download")


@contextlib.contextmanager
def serving_mlflow(tmp_path: Path):
    """A real `mlflow server` on loopback, storing runs in SQLite and artifacts in a folder
    it serves (the client uploads through it): its URL and process."""
    port = Ports.free().http
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", str(tmp_path / "server-artifacts")]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "mlflow.log").open("w") as log:
        # its own process group: the server's workers go with it when it is killed
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log_text = (tmp_path / "mlflow.log").read_text()
                    pytest.fail(f"mlflow server did not start: {log_text[-2000:]}")
                time.sleep(0.5)
        yield url, server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)


@pytest.fixture
def mlflow_server(tmp_path):
    with serving_mlflow(tmp_path) as (url, _):
        yield url


def test_an_mlflow_tracking_server_receives_the_run(few_digits, tmp_path, mlflow_server):
    out = tmp_path / "run-c"
    config = TrainConfig(data=str(few_digits), out=str(out), mlflow=mlflow_server,
                         tensorboard=False, **TINY)  # fmt: skip
    run(config)
    assert list(out.glob("events.out.tfevents.*")) == []  # --no-tensorboard
    client, found = logged_run(mlflow_server, out)
    check_mlflow_run(client, found, out, tmp_path / "download")
    assert found.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded via the server


def test_a_tracking_server_that_goes_away_does_not_stop_training(few_digits, tmp_path):
    """Two processes under torchrun log to a real `mlflow server`, killed (SIGKILL, its
    whole process group) once the first epoch is written: the run finishes on both ranks
    with its checkpoint and evaluation, and says so once."""
    out = tmp_path / "run-d"
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone",
                "--nproc_per_node=2", "-m", "resnet_triton", "train"]  # fmt: skip
    flags = [f"--data={few_digits}", f"--out={out}", "--arch=resnet18", "--weights=none",
             "--epochs=3", "--resize-size=36", "--crop-size=32", "--workers=0",
             "--no-hflip", "--batch-size=32"]  # fmt: skip
    with serving_mlflow(tmp_path) as (url, server):
        training = subprocess.Popen(
            [*torchrun, *flags, f"--mlflow={url}"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        try:
            while not (out / "metrics.json").is_file():  # epoch 1 written, then tracked
                assert training.poll() is None, training.communicate()[1][-3000:]
                time.sleep(0.1)
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
            epochs_then = len(history(out))
            stdout, stderr = training.communicate(timeout=600)  # no rank waits forever
        finally:
            if training.poll() is None:
                training.kill()
    assert epochs_then < 3  # the server went away mid-run
    assert training.returncode == 0, stderr[-3000:]
    assert [r["epoch"] for r in history(out)] == [1, 2, 3]
    assert (out / "checkpoint.pt").is_file() and (out / "evaluation.json").is_file()
    warnings = [line for line in stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, warnings
    assert "MLflow tracking stopped for the rest of this run, training goes on" in warnings[0]
    check_tensorboard(out, epochs=3)  # the other sink went on


def test_training_goes_on_without_tensorboard_installed(few_digits, tmp_path):
    """A client-side install without the tracking extra: no event files, one warning."""
    out = tmp_path / "run-e"
    blocked = ("import sys; sys.modules['tensorboard'] = None; "  # as if not installed
               "from resnet_triton import cli; sys.exit(cli.main())")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", blocked, "train", f"--data={few_digits}", f"--out={out}",
         "--arch=resnet18", "--weights=none", "--epochs=1", "--resize-size=36",
         "--crop-size=32", "--workers=0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(out.glob("events.out.tfevents.*")) == []
    assert (out / "checkpoint.pt").is_file()
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert warnings == [
        "warning: no TensorBoard event files: tensorboard is not installed "
        "(pip install 'resnet-triton[tracking]', or --no-tensorboard)"
    ]
