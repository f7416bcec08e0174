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
        "Mosec's documentation (mosecorg/mosec README, 'Concept' and its examples) splits "
        "CPU-bound preprocessing into its own stage with several processes "
        "(append_worker(num=...), as many as cores) in front of one batched inference stage "
        "(max_batch_size, max_wait_time, 10 ms by default); the HTTP front and the queues "
        "are Rust, the stages Python processes. Decoding runs in the decode stage, in "
        "parallel with batched inference. Searched: decode processes, max batch, max wait, "
        "ONNX Runtime threads."
    ),
    grid=(
        {"decoders": 2, "max_batch_size": 16, "max_wait_ms": 10, "ort_threads": 2},
        {"decoders": 1, "max_batch_size": 16, "max_wait_ms": 10, "ort_threads": 2},
        {"decoders": 2, "max_batch_size": 8, "max_wait_ms": 2, "ort_threads": 2},
        {"decoders": 2, "max_batch_size": 32, "max_wait_ms": 5, "ort_threads": 2},
        {"decoders": 2, "max_batch_size": 16, "max_wait_ms": 10, "ort_threads": 1},
    ),
    command=command,
)
