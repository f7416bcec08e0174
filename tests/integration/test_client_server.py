"""The client library and CLI against the real server."""

import asyncio
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import ADMIN_KEY, NAMES
from PIL import Image

from resnet_triton.client import AsyncClassifier, Classifier, ClientError
from resnet_triton.client.classify import get_args_parser, main
from resnet_triton.data import image_folder

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
        assert predictions(sync) == predictions(asynchronous)
        expected = expected or predictions(sync)
        assert predictions(sync) == expected
    size = len(Path(paths[1]).read_bytes())
    assert [r.source for r in sync][:2] == [paths[0], f"<{size} bytes>"]
    assert np.mean([p[0].index == t for p, t in zip(expected, targets, strict=True)]) >= 0.9


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


def test_shared_memory_gives_the_same_answers(triton, digits):
    paths, _ = val_paths(digits, 12)
    with Classifier(url(triton, "grpc"), "grpc") as plain:
        expected = predictions(plain.classify(paths, top_k=3))
    for protocol in ("grpc", "http"):
        with Classifier(
            url(triton, protocol), protocol, shared_memory=True, admin_key=ADMIN_KEY
        ) as classifier:
            assert predictions(classifier.classify(paths, top_k=3)) == expected
    with pytest.raises(ClientError, match="shared memory needs the server's admin key"):
        Classifier(url(triton, "grpc"), "grpc", shared_memory=True)
    # Without the right key the restricted API refuses the region.
    with Classifier(url(triton, "grpc"), "grpc", shared_memory=True, admin_key="x") as wrong:
        (result,) = wrong.classify(paths[:1])
    assert not result.ok
    assert "restricted, expecting header 'triton-grpc-protocol-admin-key'" in result.error


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
