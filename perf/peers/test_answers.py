"""Every peer does the ensemble's work: for the 10 photos its top-1 answers equal the Triton
ensemble's on the same published model, and a bad image fails only its own request.

Run by `make bench-peers` before the race (the peers' environments are installed there,
not by `make test`): .venv/bin/python -m pytest perf/peers/test_answers.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PERF), str(PERF / "peers")]

from measure import Target, peer_bodies, triton_bodies  # noqa: E402
from peer import Launch  # noqa: E402
from peers import PEERS  # noqa: E402
from race import NAMES, Triton, answers_of  # noqa: E402
from runner import ensure_venv, post, start_peer  # noqa: E402

from resnet_triton.data import package_photos  # noqa: E402
from resnet_triton.serving.repository import ONNX_FILE, version_dir  # noqa: E402
from resnet_triton.serving.server import Ports  # noqa: E402

REPOSITORY = PERF.parent / "model_repository"  # what `make demo` published
PHOTOS = package_photos()


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory) -> list[int]:
    """The ensemble's top-1 for each photo."""
    if not (version_dir(REPOSITORY, NAMES.classifier) / ONNX_FILE).is_file():
        pytest.fail("no published model in model_repository/: run `make demo` first")
    work = tmp_path_factory.mktemp("triton")
    bodies = triton_bodies(PHOTOS, work / "bodies", NAMES.image, NAMES.scores)
    triton = Triton(REPOSITORY, work)
    try:
        target = Target(triton.server.ports.http, f"/v2/models/{NAMES.ensemble}/infer", bodies)
        body, headers = _first(bodies)
        triton.tree.wait_answering(target.url, body, 180, headers)
        return answers_of(target, triton=True)
    finally:
        triton.stop()


def _first(bodies: Path) -> tuple[bytes, dict | None]:
    path, header = bodies.read_text().splitlines()[0].split("\t")
    return Path(path).read_bytes(), (
        {"Inference-Header-Content-Length": header} if header else None
    )


@pytest.mark.parametrize("name", sorted(PEERS))
def test_the_peer_answers_as_the_ensemble(name, ensemble, tmp_path):
    peer = PEERS[name]
    venv = ensure_venv(peer, PERF.parent / "artifacts" / "peers")
    onnx = version_dir(REPOSITORY, NAMES.classifier) / ONNX_FILE
    launch = Launch(venv, onnx.resolve(), Ports.free().http, peer.grid[0], tmp_path)
    target = Target(launch.port, peer.path, peer_bodies(PHOTOS, tmp_path / "bodies"))
    server = start_peer(peer, launch)
    try:
        server.wait_answering(target.url, PHOTOS[0].read_bytes(), timeout=300)
        answers = answers_of(target, triton=False)
        bad, _ = post(target.url, b"not an image")
        after = answers_of(target, triton=False)  # the server still answers
    finally:
        server.stop()
    assert answers == ensemble
    assert 400 <= bad < 500
    assert after == ensemble
