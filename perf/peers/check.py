"""Start one peer, ask it for the 10 photos, compare with the model in-process, stop it.

    .venv/bin/python perf/peers/check.py mosec [--setting KEY=VALUE ...] [--onnx FILE]

A developer's check while writing a peer; `make bench-peers` runs the same comparison
against the Triton ensemble for every peer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
from peer import Launch
from peers import PEERS
from runner import ROOT, ensure_venv, post, start_peer

from resnet_triton.data import package_photos
from resnet_triton.preprocess import pixels_from_bytes
from resnet_triton.serving.server import Ports
from resnet_triton.spec import ModelSpec

DEFAULT_ONNX = ROOT / "model_repository/classifier/1/model.onnx"


def local_top1(onnx: Path, photos: list[bytes]) -> list[int]:
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    spec = ModelSpec.from_json(session.get_modelmeta().custom_metadata_map["resnet_triton.spec"])
    pixels = pixels_from_bytes(photos, spec.preprocessing)
    return list(session.run(None, {spec.names.pixels: pixels})[0].argmax(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--setting", action="append", default=[], help="KEY=VALUE (JSON value)")
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    args = parser.parse_args()
    peer = PEERS[args.peer]
    settings = dict(peer.grid[0])
    for item in args.setting:
        key, value = item.split("=", 1)
        settings[key] = json.loads(value)
    venv = ensure_venv(peer, ROOT / "artifacts" / "peers")
    work = Path(tempfile.mkdtemp(prefix=f"peer-{peer.name}-"))
    launch = Launch(venv, args.onnx.resolve(), Ports.free().http, settings, work)
    photos = [p.read_bytes() for p in package_photos()]
    url = f"http://127.0.0.1:{launch.port}{peer.path}"
    server = start_peer(peer, launch)
    try:
        ready = server.wait_answering(url, photos[0], timeout=180)
        answers = [json.loads(post(url, p)[1]) for p in photos]
        bad = post(url, b"not an image")
    finally:
        server.stop()
    served = [a["index"] for a in answers]
    expected = local_top1(args.onnx, photos)
    print(f"{peer.name} {settings}: ready in {ready:.1f} s; log {work / 'server.log'}")
    print(f"top-1 served {served}\n      local  {expected}")
    print(f"a bad image: HTTP {bad[0]} {bad[1][:120]!r}")
    print(json.dumps(answers[0]))
    return 0 if served == [int(i) for i in expected] and 400 <= bad[0] < 500 else 1


if __name__ == "__main__":
    sys.exit(main())
