"""Mosec 0.9.8 (mosecorg/mosec): the peer's launch and the settings searched."""

from peer import APPS, Launch, Peer


def command(launch: Launch):
    argv = [launch.python, APPS / "mosec_app.py", "--address", "127.0.0.1",
            "--port", str(launch.port), "--timeout", "30000"]  # fmt: skip
    return argv, {}


PEER = Peer(
    name="mosec",
    version="0.9.8",
    path="/inference",
    docs=(
        "Mosec's examples split CPU-bound preprocessing into its own stage with several "
        "processes (append_worker(num=...)) in front of one batched inference stage "
        "(max_batch_size, max_wait_time); the ingress and the queues are Rust. Searched: "
        "decode processes, max batch, max wait, ONNX Runtime threads."
    ),
    grid=(
        {"decoders": 1, "max_batch_size": 16, "max_wait_ms": 10, "ort_threads": 2},
        {"decoders": 2, "max_batch_size": 16, "max_wait_ms": 10, "ort_threads": 2},
        {"decoders": 2, "max_batch_size": 8, "max_wait_ms": 5, "ort_threads": 2},
        {"decoders": 2, "max_batch_size": 32, "max_wait_ms": 20, "ort_threads": 2},
        {"decoders": 2, "max_batch_size": 16, "max_wait_ms": 10, "ort_threads": 1},
    ),
    command=command,
)
