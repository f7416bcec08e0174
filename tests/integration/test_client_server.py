"""The client library and CLI against the real server."""

import asyncio
import csv
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import ADMIN_KEY, NAMES
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from resnet_triton.client import AsyncClassifier, Classifier, ClientError, ModelInfo
from resnet_triton.client.classify import get_args_parser, main
from resnet_triton.data import image_folder
from resnet_triton.digits import demo_spec
from resnet_triton.serving.config import ServingConfig
from resnet_triton.serving.repository import read_config, render
from resnet_triton.serving.server import Ports, TritonServer

pytestmark = pytest.mark.integration


def val_paths(digits, count):
    samples = image_folder(digits / "val").samples
    picks = np.linspace(0, len(samples) - 1, count).astype(int)
    return [samples[i][0] for i in picks], [samples[i][1] for i in picks]


def mixed_inputs(paths):
    """The same images as paths, bytes, PIL images and arrays."""
    inputs = []
    for i, path in enumerate(paths):
        kind = i % 4
        if kind == 0:
            inputs.append(path)
        elif kind == 1:
            inputs.append(Path(path).read_bytes())
        elif kind == 2:
            inputs.append(Image.open(path))
        else:
            inputs.append(np.asarray(Image.open(path).convert("RGB")))
    return inputs


def url(triton, protocol):
    return f"localhost:{triton.ports.grpc if protocol == 'grpc' else triton.ports.http}"


def predictions(results):
    return [r.predictions for r in results]


def test_every_client_and_input_kind_gives_the_same_answers(triton, digits):
    paths, targets = val_paths(digits, 40)  # more than max_batch_size 32: two requests
    expected = None
    for protocol in ("grpc", "http"):
        with Classifier(url(triton, protocol), protocol) as classifier:
            sync = classifier.classify(mixed_inputs(paths), top_k=2)

        async def run(protocol):
            client = await AsyncClassifier.connect(url(triton, protocol), protocol)
            async with client:
                return await client.classify(mixed_inputs(paths), top_k=2)

        asynchronous = asyncio.run(run(protocol))
        assert all(r.ok for r in sync + asynchronous)
        # Every answer names the version that gave it: the repository's one, "1".
        assert {r.model_version for r in sync + asynchronous} == {"1"}
        assert predictions(sync) == predictions(asynchronous)
        expected = expected or predictions(sync)
        assert predictions(sync) == expected
    size = len(Path(paths[1]).read_bytes())
    assert [r.source for r in sync][:2] == [paths[0], f"<{size} bytes>"]
    assert np.mean([p[0].index == t for p, t in zip(expected, targets, strict=True)]) >= 0.9


def connections_to(port: int) -> int:
    """Established TCP connections on this machine whose far end is `port`."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            count += int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01"
    return count


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_long_lived_client_keeps_connections_for_live_threads_only(triton, digits, protocol):
    """Calls from one thread, from threads that end, and calls of several requests (the
    client's own threads) reuse or release their connections: a client shared for hours
    (a load generator, a web server's) does not pile them up."""
    paths, _ = val_paths(digits, 40)
    port = triton.ports.grpc if protocol == "grpc" else triton.ports.http
    before = connections_to(port)
    with Classifier(url(triton, protocol), protocol, concurrency=2) as classifier:
        for path in paths[:20]:
            assert classifier.classify([path])[0].ok
        for path in paths[20:30]:
            thread = threading.Thread(target=classifier.classify, args=([path],))
            thread.start()
            thread.join()
        for _ in range(3):
            assert all(r.ok for r in classifier.classify(paths))  # 40 images: 2 requests
        held = connections_to(port) - before
    # This thread's, and the 2 of the client's threads (the ended threads' are closed).
    assert 1 <= held <= 3, held


def ensemble_stats(triton):
    client = httpclient.InferenceServerClient(url(triton, "http"))
    stats = client.get_inference_statistics(NAMES.ensemble)["model_stats"][0]
    client.close()
    return stats["inference_stats"]["success"]["count"], stats["inference_count"]


def test_long_lists_are_split_into_requests_of_max_batch_size(triton, digits):
    paths, _ = val_paths(digits, 70)
    requests_before, images_before = ensemble_stats(triton)
    with Classifier(url(triton, "grpc"), "grpc") as classifier:
        assert classifier.info.max_batch_size == 32
        results = classifier.classify(paths)
    requests_after, images_after = ensemble_stats(triton)
    assert len(results) == 70 and all(r.ok for r in results)
    assert requests_after - requests_before == 3  # 32 + 32 + 6
    assert images_after - images_before == 70


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_top_k_beyond_the_classes_gives_every_class(triton, digits, protocol):
    paths, _ = val_paths(digits, 1)
    with Classifier(url(triton, protocol), protocol) as classifier:
        assert classifier.info.classes == 10
        [row] = classifier.classify_bytes([Path(paths[0]).read_bytes()], top_k=50)
    assert sorted(p.index for p in row) == list(range(10))  # was: cannot reshape 10 into (1,50)


def test_a_bad_image_fails_alone_and_is_named(triton, digits, tmp_path):
    paths, _ = val_paths(digits, 10)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    inputs = [*paths[:5], broken, *paths[5:], "missing.png"]
    with Classifier(url(triton, "http"), "http") as classifier:
        results = classifier.classify(inputs)
    assert [r.ok for r in results] == [True] * 5 + [False] + [True] * 5 + [False]
    assert results[5].source == str(broken)
    assert "image 0: not a decodable image (38 bytes" in results[5].error
    assert results[11].error == "missing.png: cannot read: No such file or directory"


def registered_regions(triton) -> dict[str, dict]:
    """The server's system shared-memory regions: name -> name, key, offset, byte_size."""
    client = httpclient.InferenceServerClient(url(triton, "http"))
    try:
        status = client.get_system_shared_memory_status(headers={"admin-key": ADMIN_KEY})
    finally:
        client.close()
    return {region["name"]: region for region in status}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_shared_memory_reuses_a_region_per_request_in_flight(triton, digits, protocol):
    paths, _ = val_paths(digits, 70)  # requests of 32 + 32 + 6
    with Classifier(url(triton, "grpc"), "grpc") as plain:
        expected = predictions(plain.classify(paths, top_k=3))
    seen, lock = [], threading.Lock()

    def look(count):  # after each request, while the others are in flight
        with lock:
            seen.append(registered_regions(triton))

    with Classifier(url(triton, protocol), protocol, concurrency=2, shared_memory=True,
                    admin_key=ADMIN_KEY) as classifier:  # fmt: skip
        for _ in range(3):  # 9 requests, 2 at a time
            results = classifier.classify(paths, top_k=3, progress=look)
            assert [r.error for r in results] == [None] * 70
            assert predictions(results) == expected
        kept = registered_regions(triton)
    names = set().union(*seen)
    assert len(seen) == 9 and 1 <= len(names) <= 2  # one region per request in flight
    assert set(kept) == names  # registered once, kept between requests
    # Sized by the largest request: 32 BYTES elements, each 4 bytes of length + the file.
    sizes = [sum(4 + len(Path(p).read_bytes()) for p in paths[i : i + 32]) for i in (0, 32, 64)]
    assert max(int(region["byte_size"]) for region in kept.values()) == max(sizes)
    assert registered_regions(triton) == {}  # close() unregistered them


def test_shared_memory_is_registered_again_after_the_server_restarts(repository, digits, tmp_path):
    """A restarted server (or a rollout's new one on the same address) has forgotten the
    pool's regions: each request's region is registered again once and the request sent
    again, over gRPC and HTTP, instead of every request failing for good."""
    paths, _ = val_paths(digits, 40)  # requests of 32 + 8
    server = TritonServer(repository, Ports.free(), log_path=tmp_path / "triton.log",
                          exit_timeout_s=3, admin_key=ADMIN_KEY)  # fmt: skip
    clients = {}
    try:
        server.start().wait_ready([NAMES.ensemble], timeout=180)
        for protocol in ("grpc", "http"):
            clients[protocol] = Classifier(url(server, protocol), protocol, concurrency=1,
                                           shared_memory=True, admin_key=ADMIN_KEY)  # fmt: skip
        before = {p: predictions(c.classify(paths)) for p, c in clients.items()}
        server.stop()
        server.start().wait_ready([NAMES.ensemble], timeout=180)  # the same ports
        assert registered_regions(server) == {}  # the new process knows none of them
        after = {p: c.classify(paths) for p, c in clients.items()}
        registered = registered_regions(server)
    finally:
        for client in clients.values():
            client.close()
        server.stop()
    for protocol, results in after.items():
        assert [r.error for r in results] == [None] * 40, protocol
        assert predictions(results) == before[protocol] == before["grpc"]
    assert len(registered) == 2  # one region per client, registered again


def test_shared_memory_needs_the_admin_key(triton, digits, monkeypatch):
    paths, _ = val_paths(digits, 1)
    with pytest.raises(ClientError, match="shared memory needs the server's admin key"):
        Classifier(url(triton, "grpc"), "grpc", shared_memory=True)
    before = sorted(Path("/dev/shm").glob("resnet_triton_client_*"))
    tries = []
    register = grpcclient.InferenceServerClient.register_system_shared_memory

    def counted(self, *args, **kwargs):
        tries.append(args)
        return register(self, *args, **kwargs)

    monkeypatch.setattr(grpcclient.InferenceServerClient, "register_system_shared_memory", counted)
    # Without the right key the restricted API refuses the region, at once: the key
    # stays wrong however often it is sent (Triton says UNAVAILABLE over gRPC).
    with Classifier(url(triton, "grpc"), "grpc", shared_memory=True, admin_key="x") as wrong:
        (result,) = wrong.classify(paths)
    assert len(tries) == 1
    assert result.error == (
        "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
    )
    assert sorted(Path("/dev/shm").glob("resnet_triton_client_*")) == before  # none left


def test_shared_memory_sends_a_dali_ensemble_uint8_rows(triton, digits, tmp_path, monkeypatch):
    """The DALI ensemble takes each image's encoded bytes as a UINT8 row, zero-padded to
    the longest. Triton's DALI backend cannot run here: the request is checked against the
    rendered DALI config, and sent to the Python-preprocessing server, which registers the
    region, reads the input's type and refuses it."""
    render(demo_spec(), tmp_path, serving=ServingConfig(preprocess_backend="dali"))
    config = read_config(tmp_path / NAMES.ensemble / "config.pbtxt")
    (image,) = config.input
    datatype = mc.DataType.Name(image.data_type).removeprefix("TYPE_")
    assert (datatype, list(image.dims)) == ("UINT8", [-1])
    dali = ModelInfo(config.name, image.name, config.output[0].name, config.max_batch_size,
                     datatype)  # fmt: skip
    payloads = [Path(p).read_bytes() for p in val_paths(digits, 5)[0]]
    longest = max(map(len, payloads))
    rows = b"".join(p.ljust(longest, b"\0") for p in payloads)  # (5, longest) uint8
    sent = []
    with Classifier(url(triton, "grpc"), "grpc", shared_memory=True,
                    admin_key=ADMIN_KEY) as classifier:  # fmt: skip
        classifier.info = dali  # what it reads from a DALI server
        client = classifier._client()  # this thread's, which classify_bytes uses
        infer = client.infer

        def seen_infer(model, inputs, **options):
            sent.extend(inputs)
            return infer(model, inputs, **options)

        monkeypatch.setattr(client, "infer", seen_infer)
        with pytest.raises(ClientError) as refused:
            classifier.classify_bytes(payloads)
        ((name, region),) = registered_regions(triton).items()
        written = Path("/dev/shm", region["key"].lstrip("/")).read_bytes()
    assert str(refused.value).endswith(
        "inference input 'IMAGE' data-type is 'UINT8', but model 'resnet_ensemble' expects 'BYTES'"
    )
    (request,) = sent
    shape = request.shape()
    assert (request.datatype(), shape) == ("UINT8", [len(payloads), longest])
    # The config's dims ([-1]) behind a batch dimension of at most max_batch_size.
    assert len(shape) == 1 + len(image.dims) and shape[0] <= config.max_batch_size
    assert all(dim in (-1, size) for dim, size in zip(image.dims, shape[1:], strict=True))
    parameters = request._get_tensor().parameters  # the request names region and size
    assert parameters["shared_memory_region"].string_param == name
    assert parameters["shared_memory_byte_size"].int64_param == len(rows)
    assert int(region["byte_size"]) == len(rows) and written == rows


def test_unknown_model_and_unreachable_server(triton):
    with pytest.raises(ClientError, match="unknown model 'nope' at localhost"):
        Classifier(url(triton, "grpc"), "grpc", model="nope")
    with pytest.raises(ClientError, match="unknown model 'nope' at localhost"):
        Classifier(url(triton, "http"), "http", model="nope")
    with pytest.raises(ClientError, match="cannot reach Triton at localhost:9"):
        Classifier("localhost:9", "http")


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_cli_globs_and_machine_readable_output(triton, digits, capsys, fmt):
    pattern = str(digits / "val" / "7" / "digit_0*.png")
    args = get_args_parser().parse_args(
        [pattern, "--url", url(triton, "grpc"), "--format", fmt, "--top-k", "2"]
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        rows = [json.loads(line) for line in out.splitlines()]
        assert len(rows) >= 5 and all(r["ok"] and len(r["predictions"]) == 2 for r in rows)
        assert sum(r["predictions"][0]["label"] == "7" for r in rows) >= len(rows) - 1
    else:
        rows = list(csv.DictReader(io.StringIO(out)))
        assert rows and set(rows[0]) >= {"source", "label_1", "score_1", "label_2", "error"}
        assert all(r["error"] == "" for r in rows)
