"""Liveness probe: classify the shipped warmup photo through the ensemble over HTTP.

Readiness is not enough: when a Python-backend stub dies, Triton 2.51 does
not restart it and may keep reporting the model ready. An inference through
the whole ensemble is the check that cannot be fooled. Standard library only,
so it runs in the serving image as a Docker healthcheck:

    python -m resnet_triton.serving.probe --url localhost:8000 --model resnet_ensemble

Where the proxy in front of Triton asks for an inference key, the probe sends one as
`Authorization: Bearer <key>`: --api-key, else the container's own key (written by
`resnet-triton fence` to /tmp/nginx/healthcheck.key, used when that file exists;
--api-key-file names another), else $RESNET_TRITON_API_KEY; with none, it sends
none (keys off).

Exit 0 and one line with the top-1 answer when the ensemble answers, 1 with
the reason when it does not. The tensor names and the image input's datatype
come from the model's metadata, so a spec with other names is probed as well.
The warmup photo and the BYTES element format live here, where the repository
renderer imports them: this module stays standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from resnet_triton.endpoints import API_KEY_ENV
from resnet_triton.spec import Names

# The key the container writes for its own probe at start (serving/fence.py writes it
# here); with no such file, the variable every client reads (API_KEY_ENV).
HEALTHCHECK_KEY_FILE = Path("/tmp/nginx/healthcheck.key")


def warmup_image() -> bytes:
    """A 120x80 JPEG of scikit-image's chelsea.png, shipped in the package."""
    return resources.files("resnet_triton").joinpath("assets/warmup.jpg").read_bytes()


def serialized_bytes(data: bytes) -> bytes:
    """One TYPE_STRING tensor element as Triton serializes it: 4-byte LE length, then data."""
    return struct.pack("<I", len(data)) + data


def _call(request: urllib.request.Request | str, model: str, url: str, timeout_s: float):
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{model} answered HTTP {exc.code}: {exc.read()[:200]!r}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RuntimeError(f"no answer from {url}: {exc}") from None


def _image_input(model: str, metadata: dict, image: bytes) -> tuple[dict, bytes]:
    """The request's input entry (named from the model's metadata) and its binary data."""
    if len(metadata["inputs"]) != 1 or len(metadata["outputs"]) != 1:
        raise RuntimeError(
            f"{model} has inputs {[i['name'] for i in metadata['inputs']]} and outputs "
            f"{[o['name'] for o in metadata['outputs']]}; the probe needs an ensemble with "
            "one image input and one scores output"
        )
    (tensor,) = metadata["inputs"]
    if tensor["datatype"] == "UINT8":  # the DALI preprocess model: the bytes themselves
        element, shape = image, [1, len(image)]
    elif tensor["datatype"] == "BYTES":  # the Python preprocess model: one serialized element
        element, shape = serialized_bytes(image), [1, 1]
    else:
        raise RuntimeError(
            f"{model} input {tensor['name']} is {tensor['datatype']}; the probe sends an "
            "encoded image as BYTES or UINT8"
        )
    entry = {
        "name": tensor["name"],
        "shape": shape,
        "datatype": tensor["datatype"],
        "parameters": {"binary_data_size": len(element)},
    }
    return entry, element


def probe(url: str, model: str, timeout_s: float = 10.0, api_key: str | None = None) -> str:
    """The top-1 "score:index:label" for the warmup photo; raises RuntimeError otherwise."""
    auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    metadata = _call(
        urllib.request.Request(f"http://{url}/v2/models/{model}", headers=auth),
        model, url, timeout_s,
    )  # fmt: skip
    image, element = _image_input(model, metadata, warmup_image())
    scores = metadata["outputs"][0]["name"]
    header = json.dumps(
        {
            "inputs": [image],
            "outputs": [{"name": scores, "parameters": {"classification": 1}}],
        }
    ).encode()
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer",
        data=header + element,
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
            **auth,
        },
        method="POST",
    )
    return _call(request, model, url, timeout_s)["outputs"][0]["data"][0]


def api_key(given: str | None, key_file: Path | None) -> str | None:
    """The key to send: given, else the key file's (the default file only where it
    exists), else $RESNET_TRITON_API_KEY, else none."""
    if given:
        return given
    path = key_file or HEALTHCHECK_KEY_FILE
    if key_file is not None or path.exists():
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise RuntimeError(f"cannot read the API key file {path}: {exc.strerror}") from None
    return os.environ.get(API_KEY_ENV) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8000", help="Triton's HTTP host:port")
    parser.add_argument("--model", default=Names().ensemble)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument(
        "--api-key", help=f"the inference key (default: the key file's, else ${API_KEY_ENV})"
    )
    parser.add_argument(
        "--api-key-file", type=Path,
        help=f"a file holding the key (default {HEALTHCHECK_KEY_FILE}, where it exists)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        key = api_key(args.api_key, args.api_key_file)
        print(f"{args.model} answered {probe(args.url, args.model, args.timeout, key)}")
    except RuntimeError as exc:
        print(f"probe failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
