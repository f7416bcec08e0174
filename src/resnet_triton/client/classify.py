"""`resnet-triton classify`: files, folders and globs through the Triton ensemble."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict

from tqdm import tqdm

from resnet_triton.client import API_KEY_ENV, PROTOCOLS, Classifier, Result
from resnet_triton.preprocess import image_files
from resnet_triton.spec import Names

FORMATS = ("text", "json", "csv")


def write(results: list[Result], fmt: str, top_k: int, out=None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        for r in results:
            print(json.dumps({**asdict(r), "ok": r.ok}), file=out)
    elif fmt == "csv":
        writer = csv.writer(out)
        ranks = [f"{k}_{i}" for i in range(1, top_k + 1) for k in ("label", "index", "score")]
        writer.writerow(["source", *ranks, "unknown", "error"])
        for r in results:
            cells = [v for p in r.predictions for v in (p.label, p.index, f"{p.score:.6f}")]
            cells += [""] * (3 * top_k - len(cells))
            writer.writerow([r.source, *cells, int(r.unknown), r.error or ""])
    else:
        for r in results:
            if r.ok:
                ranked = ", ".join(f"{p.label} ({p.score:.4f})" for p in r.predictions)
                shown = f"unknown (none of the classes; {ranked})" if r.unknown else ranked
                print(f"{r.source}: {shown}", file=out)
            else:
                print(f"{r.source}: ERROR {r.error}", file=out)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton classify",
        description="Classify image files, folders (recursively) and globs with the Triton "
        "ensemble. Prints top-k labels per file; exits 1 if any file failed, with its error.",
    )
    parser.add_argument("paths", nargs="+", help="image files, folders or globs ('shots/*.jpg')")
    parser.add_argument("--protocol", default="grpc", choices=sorted(PROTOCOLS))
    parser.add_argument("--url", help="host:port (default localhost:8001 gRPC, :8000 HTTP)")
    parser.add_argument("--model", default=Names().ensemble, help="default %(default)s")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--retries", type=int, default=3, help="on an unavailable or throttling server"
    )
    parser.add_argument(
        "--api-key",
        help=f"the inference key the server's proxy asks for (default: ${API_KEY_ENV}, "
        "which keeps it out of the process list)",
    )
    parser.add_argument("--format", default="text", choices=FORMATS)
    parser.add_argument(
        "--shared-memory", action="store_true", help="send inputs through system shared memory"
    )
    parser.add_argument("--admin-key", help="the server's admin key (for --shared-memory)")
    return parser


def main(args: argparse.Namespace) -> int:
    paths = image_files(args.paths)
    with (
        Classifier(
            args.url, args.protocol, args.model, timeout_s=args.timeout, retries=args.retries,
            concurrency=args.concurrency, shared_memory=args.shared_memory,
            admin_key=args.admin_key, api_key=args.api_key,
        ) as classifier,
        tqdm(total=len(paths), unit="img", file=sys.stderr, disable=None) as bar,
    ):  # fmt: skip
        results = classifier.classify(paths, args.top_k, progress=bar.update)
    write(results, args.format, args.top_k)
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"{failed} of {len(results)} images failed", file=sys.stderr)
    return 1 if failed else 0
