"""BentoML 1.4.40 (bentoml/BentoML): the peer's launch and the settings searched."""

from peer import APPS, Launch, Peer


def command(launch: Launch):
    argv = [launch.bin("bentoml"), "serve", "bentoml_app:Decode", "--working-dir", APPS,
            "--host", "127.0.0.1", "--port", str(launch.port), "--do-not-track"]  # fmt: skip
    env = {
        "BENTOML_DO_NOT_TRACK": "true",  # no usage statistics
        "BENTOML_HOME": str(launch.work / "bentoml"),  # its stores and config, not ~/bentoml
    }
    return argv, env


PEER = Peer(
    name="bentoml",
    version="1.4.40",
    path="/predict",
    docs=(
        "BentoML's adaptive batching guide (docs.bentoml.com, 'Adaptive batching') marks the "
        "model API batchable=True with max_batch_size and max_latency_ms, and for several "
        "Services has the inference Service batch the calls of the Service in front of it "
        "(bentoml.depends, 'Run distributed Services'); 'Parallelize requests handling' sets "
        "workers='cpu_count' for CPU-bound Python. So decoding runs in the ingress Service's "
        "workers (async API, root-input bytes) in parallel with one batched Classify worker. "
        "max_latency_ms is a latency bound (requests estimated to miss it get 503), not a "
        "wait, which the dispatcher learns; the guide says to raise it on 503s, so the "
        "default 60000 comes first and the guide's example 1000 is tried. Searched: decode "
        "workers, Classify workers, max batch, max latency, ONNX Runtime threads."
    ),
    grid=(
        {
            "decoders": "cpu_count",
            "classifiers": 1,
            "max_batch_size": 32,
            "max_latency_ms": 60000,
            "ort_threads": 2,
        },
        {
            "decoders": 1,
            "classifiers": 1,
            "max_batch_size": 32,
            "max_latency_ms": 60000,
            "ort_threads": 2,
        },
        {
            "decoders": "cpu_count",
            "classifiers": 1,
            "max_batch_size": 16,
            "max_latency_ms": 60000,
            "ort_threads": 2,
        },
        {
            "decoders": "cpu_count",
            "classifiers": 1,
            "max_batch_size": 32,
            "max_latency_ms": 1000,
            "ort_threads": 2,
        },
        {
            "decoders": "cpu_count",
            "classifiers": 1,
            "max_batch_size": 32,
            "max_latency_ms": 60000,
            "ort_threads": 1,
        },
        {
            "decoders": "cpu_count",
            "classifiers": 2,
            "max_batch_size": 16,
            "max_latency_ms": 60000,
            "ort_threads": 1,
        },
    ),  # fmt: skip
    command=command,
)
