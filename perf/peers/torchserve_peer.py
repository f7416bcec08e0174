"""TorchServe 0.12.0 (pytorch/serve): the peer's launch and the settings searched.

Everything of one start lies in launch.work: config.properties, the model store with the
`classifier` model (torch-model-archiver --archive-format no-archive: the handler
apps/torchserve_app.py and its model-config.yaml), TorchServe's logs, and a temp folder
that holds the pid file `torchserve --stop` reads and the workers' Unix sockets, so two
starts never share one.
"""

import json
import os
import socket
import subprocess

from peer import APPS, Launch, Peer
from runner import PeerError

MODEL = "classifier"


def free_ports(count: int) -> list[int]:
    """Loopback ports nobody listens on now: management, metrics and the two gRPC APIs,
    which TorchServe always opens."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def config_properties(launch: Launch) -> str:
    management, metrics, grpc_inference, grpc_management = free_ports(4)
    return "\n".join([
        f"inference_address=http://127.0.0.1:{launch.port}",
        f"management_address=http://127.0.0.1:{management}",
        f"metrics_address=http://127.0.0.1:{metrics}",
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={grpc_inference}",
        f"grpc_management_port={grpc_management}",
        f"model_store={launch.work / 'model_store'}",
        f"load_models={MODEL}={MODEL}",
        f"default_workers_per_model={launch.settings.get('workers', 1)}",
        # The frontend's threads as documented, one per core; the default queue holds far
        # more than the race's 16 clients.
        f"number_of_netty_threads={os.cpu_count()}",
        f"netty_client_threads={os.cpu_count()}",
        "job_queue_size=100",
        "async_logging=true",
        "enable_metrics_api=false",
        "disable_system_metrics=true",
        "install_py_dep_per_model=false",
        "decode_input_request=false",  # the body reaches the handler as bytes, always
    ]) + "\n"  # fmt: skip


def model_config(settings: dict) -> str:
    """model-config.yaml (written as JSON, which YAML reads): the frontend's batching and
    workers, and the handler's micro batching when the setting asks for it."""
    config = {
        "minWorkers": settings.get("workers", 1),
        "maxWorkers": settings.get("workers", 1),
        "batchSize": settings.get("batch_size", 16),
        "maxBatchDelay": settings.get("max_batch_delay_ms", 10),
        "responseTimeout": 120,
    }
    if settings.get("micro_batch_size"):
        config["micro_batching"] = {
            "micro_batch_size": settings["micro_batch_size"],
            "parallelism": {
                "preprocess": settings.get("decode_threads", 2),
                "inference": 1,
                "postprocess": 1,
            },
        }
    return json.dumps(config, indent=2) + "\n"


def archive(launch: Launch) -> None:
    """The model store: the handler and its config, unzipped (no-archive) so that a start
    does not unpack anything; the ONNX file is ONNX_MODEL, shared with every peer."""
    config = launch.work / "model-config.yaml"
    config.write_text(model_config(launch.settings))
    (launch.work / "model_store").mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [launch.bin("torch-model-archiver"), "--model-name", MODEL, "--version", "1.0",
         "--handler", APPS / "torchserve_app.py", "--config-file", config,
         "--archive-format", "no-archive", "--export-path", launch.work / "model_store",
         "--force"],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode:
        said = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise PeerError(f"torch-model-archiver failed: {' | '.join(said)}")


def temp_dir(launch: Launch) -> str:
    return str(launch.work / "tmp")


def command(launch: Launch):
    archive(launch)
    (launch.work / "config.properties").write_text(config_properties(launch))
    (launch.work / "tmp").mkdir(exist_ok=True)
    argv = [launch.bin("torchserve"), "--foreground", "--ncs", "--disable-token-auth",
            "--ts-config", launch.work / "config.properties",
            "--model-store", launch.work / "model_store"]  # fmt: skip
    env = {
        "TMPDIR": temp_dir(launch),  # where torchserve --stop finds the pid file
        "TEMP": temp_dir(launch),  # the JVM's java.io.tmpdir: the workers' sockets
        "LOG_LOCATION": str(launch.work / "logs"),
        "METRICS_LOCATION": str(launch.work / "logs"),
    }
    return argv, env


def stop(launch: Launch):
    # The foreground `torchserve` only waits for the JVM; --stop terminates the JVM (found
    # by the pid file in TMPDIR), which stops its workers. In launch.work, because --stop
    # deletes a key_file.json in the folder it runs in.
    return ["env", "-C", launch.work, f"TMPDIR={temp_dir(launch)}", launch.bin("torchserve"),
            "--stop"]  # fmt: skip


PEER = Peer(
    name="torchserve",
    version="0.12.0",
    path=f"/predictions/{MODEL}",
    docs=(
        "TorchServe's Performance Guide (docs/performance_guide.md, v0.12.0) puts batch_size "
        "and max_batch_delay first (Batch Inference with TorchServe), then the number of "
        "workers; configuration.md makes one worker per logical CPU the default, and the "
        "guide until 2023 said to add CPU workers after cutting each to one intra-op thread: "
        "first entry 2 workers x 1 ORT thread, batches of 16 within 10 ms. Its CPU launcher "
        "(cpu_launcher_enable) is left off: it pins PyTorch's OpenMP threads and runs each "
        "worker in a session of its own under another torch process, outside the race's "
        "CPU and memory account. Each worker decodes its batch and then runs it, so with 2 "
        "workers one decodes while the other infers; MicroBatching "
        "(examples/micro_batching) pipelines decode threads and inference inside one "
        "worker instead. Frontend: netty threads one per core, job_queue_size 100, "
        "async_logging (docs/logging.md), system metrics and the metrics API off. "
        "Searched: workers, batch size, batch delay, ORT threads, micro batching."
    ),
    grid=(
        {"workers": 2, "batch_size": 16, "max_batch_delay_ms": 10, "ort_threads": 1},
        {"workers": 1, "batch_size": 16, "max_batch_delay_ms": 10, "ort_threads": 2},
        {"workers": 2, "batch_size": 8, "max_batch_delay_ms": 5, "ort_threads": 1},
        {"workers": 2, "batch_size": 32, "max_batch_delay_ms": 20, "ort_threads": 1},
        {"workers": 2, "batch_size": 16, "max_batch_delay_ms": 10, "ort_threads": 2},
        {
            "workers": 1,
            "batch_size": 16,
            "max_batch_delay_ms": 10,
            "ort_threads": 2,
            "micro_batch_size": 4,
            "decode_threads": 2,
        },
    ),
    command=command,
    stop=stop,
    os_packages=("openjdk-17-jre-headless",),
)
