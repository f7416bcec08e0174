"""Liveness probe: classify the shipped warmup photo through the ensemble over HTTP.

Readiness is not enough: when a Python-backend stub dies, Triton 2.51 does
not restart it and may keep reporting the model ready. An inference through
the whole ensemble is the check that cannot be fooled. Standard library only,
so it runs in the serving image as a Docker healthcheck:

    python -m resnet_triton.serving.probe --url localhost:8000 --model resnet_ensemble

Exit 0 and one line with the top-1 answer when the ensemble answers, 1 with
the reason when it does not.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import urllib.error
import urllib.request
from importlib import resources

from resnet_triton.spec import Names


def _call(request: urllib.request.Request | str, model: str, url: str, timeout_s: float):
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{model} answered HTTP {exc.code}: {exc.read()[:200]!r}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RuntimeError(f"no answer from {url}: {exc}") from None


def probe(url: str, model: str, timeout_s: float = 10.0) -> str:
    """The top-1 "score:index:label" for the warmup photo; raises RuntimeError otherwise."""
    image = resources.files("resnet_triton").joinpath("assets/warmup.jpg").read_bytes()
    # The image input's datatype: BYTES (the Python preprocess model) or UINT8 (DALI).
    metadata = _call(f"http://{url}/v2/models/{model}", model, url, timeout_s)
    if metadata["inputs"][0]["datatype"] == "UINT8":
        element, shape, datatype = image, [1, len(image)], "UINT8"
    else:  # a serialized BYTES element: 4-byte length, then the bytes
        element, shape, datatype = struct.pack("<I", len(image)) + image, [1, 1], "BYTES"
    names = Names()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": names.image,
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(element)},
                }
            ],
            "outputs": [{"name": names.scores, "parameters": {"classification": 1}}],
        }
    ).encode()
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer",
        data=header + element,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        },
        method="POST",
    )
    return _call(request, model, url, timeout_s)["outputs"][0]["data"][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8000", help="Triton's HTTP host:port")
    parser.add_argument("--model", default=Names().ensemble)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        print(f"{args.model} answered {probe(args.url, args.model, args.timeout)}")
    except RuntimeError as exc:
        print(f"probe failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
