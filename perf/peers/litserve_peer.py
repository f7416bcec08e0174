"""LitServe 0.2.19 (Lightning-AI/LitServe): the peer's launch and the settings searched."""

from peer import APPS, Launch, Peer


def command(launch: Launch):
    argv = [launch.python, APPS / "litserve_app.py", "--host", "127.0.0.1",
            "--port", str(launch.port)]  # fmt: skip
    # LitServe 0.2.19 makes no usage or telemetry calls (its source has no HTTP client);
    # the one thing that reads the environment for auth is cleared so a stray key in the
    # caller's environment cannot turn it on.
    return argv, {"LIT_SERVER_API_KEY": ""}


PEER = Peer(
    name="litserve",
    version="0.2.19",
    path="/predict",
    docs=(
        "LitServe's LitServer reference says to set workers_per_device to the number of "
        "cores on a CPU; its batching guide (lightning.ai/docs/litserve/features/batching) "
        "turns on dynamic batching with max_batch_size and batch_timeout; its own ResNet "
        "image benchmark (tests/parity_fastapi/ls-server.py) runs on CPU with batch size 8, "
        "batch_timeout 0.01 s, 2 workers per device and fast_queue (ZeroMQ), and decodes "
        "the images of a batch in LitAPI.batch() with a thread pool. There is no separate "
        "decode stage: decoding and inference share each inference worker, so decoding "
        "runs beside inference only across workers and across a batch's threads. Searched: "
        "workers_per_device, max_batch_size, batch_timeout, ONNX Runtime threads."
    ),
    grid=(
        {"workers_per_device": 2, "max_batch_size": 8, "batch_timeout": 0.01, "ort_threads": 1},
        {"workers_per_device": 2, "max_batch_size": 16, "batch_timeout": 0.01, "ort_threads": 1},
        {"workers_per_device": 2, "max_batch_size": 8, "batch_timeout": 0.005, "ort_threads": 2},
        {"workers_per_device": 1, "max_batch_size": 16, "batch_timeout": 0.01, "ort_threads": 2},
        {"workers_per_device": 1, "max_batch_size": 32, "batch_timeout": 0.02, "ort_threads": 2},
    ),
    command=command,
)
