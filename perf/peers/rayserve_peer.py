"""Ray Serve 2.60.0 (ray-project/ray, ray[serve]): the peer's launch and the settings
searched."""

from peer import APPS, Launch, Peer

# The Performance Tuning guide's throughput-optimized serving: user code and the router
# on the replica's own event loop, buffered request logs, gRPC between deployments and
# direct ingress into the replicas (the app keeps blocking work off the event loop, the
# precondition it states).
THROUGHPUT_OPTIMIZED = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # A replica taking HTTP directly drains 30 s by default at shutdown, for an outer
    # load balancer to notice; there is none, and a stop must take seconds.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
}


def command(launch: Launch):
    argv = [launch.python, APPS / "rayserve_app.py", "--port", str(launch.port),
            "--temp-dir", launch.work / "ray"]  # fmt: skip
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",  # no usage report to the internet
        # Ray's single-node mode (as on macOS): GCS, raylet and workers on 127.0.0.1,
        # not on the machine's address.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    if launch.settings.get("throughput_optimized", False):
        env.update(THROUGHPUT_OPTIMIZED)
    return argv, env


def _grid(**changes) -> dict:
    recommended = {"throughput_optimized": True, "ingress_replicas": 2,
                   "classifier_replicas": 1, "max_batch_size": 16, "batch_wait_ms": 10,
                   "ort_threads": 2}  # fmt: skip
    return {**recommended, **changes}


PEER = Peer(
    name="rayserve",
    version="2.60.0",
    path="/classify",
    docs=(
        "Ray Serve's guides 'Deploy Compositions of Models' and 'Dynamic Request Batching' "
        "(docs.ray.io/en/latest/serve/model_composition.html, "
        "serve/advanced-guides/dyn-req-batch.html) put preprocessing and the model in "
        "deployments of their own, scaled by num_replicas and given cores by "
        "ray_actor_options num_cpus, the model behind @serve.batch(max_batch_size, "
        "batch_wait_timeout_s; power-of-2 batches, a wait well under the latency budget) "
        "with max_ongoing_requests >= max_batch_size; 'Asyncio and concurrency best "
        "practices' offloads CPU work from the event loop (asyncio.to_thread), and "
        "'Performance Tuning' (serve/advanced-guides/performance.html) recommends "
        "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 for throughput. Here the ingress deployment "
        "decodes (its replicas are the decode processes) and calls the batched classifier "
        "deployment; Ray's HTTP proxy actor is in front (HAProxy ingress not used: it binds "
        "fixed ports on all interfaces). Searched: throughput-optimized flags, ingress and "
        "classifier replicas, max batch, batch wait, ONNX Runtime threads."
    ),
    grid=(
        _grid(),
        _grid(throughput_optimized=False),
        _grid(ingress_replicas=1),
        _grid(max_batch_size=8, batch_wait_ms=5),
        _grid(max_batch_size=32, batch_wait_ms=20),
        _grid(classifier_replicas=2, ort_threads=1),
    ),
    command=command,
)
