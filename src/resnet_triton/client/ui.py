"""`resnet-triton ui`: a web page to try the served model.

Drop or choose images; each goes to the Triton ensemble through the project's
client library (gRPC or HTTP) in its own request, and its card shows the top-k
labels with scores, the latency of that request, and, when a checkpoint is given,
the Grad-CAM overlay of the served top-1 class (computed here, on the same bytes, with
the served model's preprocessing). A file the server refuses shows the server's
error in its card; the page and every other image go on.

    resnet-triton ui --url localhost:8001 --checkpoint artifacts/demo/train/checkpoint.pt

With --review CAPTURES --labelled DIR the page also has a Review tab over the captured
traffic (client/review.py): disagreements of a --compare report first, then "unknown"
answers, one click or key assigns a class or "not one of ours", and the image lands in
DIR/<class>/ with a line in DIR/labels.jsonl naming the reviewer.

Behind a proxy with inference keys, --api-key (or $RESNET_TRITON_API_KEY) is sent with
every request this process makes; the page never sees the key.

The page (assets/ui.html) needs nothing from the internet, and without
--checkpoint this process needs no PyTorch. It listens on 127.0.0.1 unless
--host says otherwise.
"""

import argparse
import base64
import getpass
import json
import os
import threading
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from resnet_triton.client import API_KEY_ENV, PROTOCOLS, Classifier
from resnet_triton.client.review import (
    Review,
    ReviewError,
    UnknownCapture,
    read_compared,
    served_labels,
)
from resnet_triton.errors import UserError
from resnet_triton.spec import Names

if TYPE_CHECKING:
    from resnet_triton.explain import Explainer

MAX_UPLOAD_BYTES = 32 * 2**20
MAX_DECISION_BYTES = 4096  # {"label": ..., "by": ...}
NEEDS_EXTRA = "resnet-triton ui needs the ui extra: pip install 'resnet-triton[ui]'"


def create_app(classifier: Classifier, explainer: "Explainer | None" = None, top_k: int = 5,
               review: Review | None = None):  # fmt: skip
    try:
        from fastapi import FastAPI, UploadFile
        from fastapi.responses import HTMLResponse, JSONResponse
    except ImportError:
        raise UserError(NEEDS_EXTRA) from None

    # No `from __future__ import annotations` in this module: FastAPI reads the handlers'
    # annotations, and UploadFile is imported here, not at module level.
    app = FastAPI(title="resnet-triton", docs_url=None, redoc_url=None, openapi_url=None)
    page = resources.files("resnet_triton").joinpath("assets/ui.html").read_text()
    explaining = threading.Lock()  # Grad-CAM's hooks hold one pass at a time

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/model")
    def model() -> dict:
        return {"model": classifier.model, "url": classifier.url, "protocol": classifier.protocol,
                "top_k": top_k, "explains": explainer is not None,
                "reject_below": classifier.info.reject_below,
                "review": review is not None}  # fmt: skip

    @app.post("/api/classify")
    def classify(image: UploadFile):
        name = image.filename or "image"
        data = image.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            error = f"{name}: larger than the page's limit of {MAX_UPLOAD_BYTES // 2**20} MiB"
            return JSONResponse({"file": name, "error": error}, status_code=413)
        start = time.perf_counter()
        [result] = classifier.classify([data], top_k=top_k)
        latency_ms = (time.perf_counter() - start) * 1000
        if not result.ok:
            return JSONResponse({"file": name, "error": result.error}, status_code=422)
        answer = {
            "file": name,
            "latency_ms": round(latency_ms, 2),
            "predictions": [{"label": p.label, "score": p.score} for p in result.predictions],
            "unknown": result.unknown,  # below the served model's reject_below
            "reject_below": classifier.info.reject_below,
            "overlay": None,
        }
        if explainer is not None:
            try:
                with explaining:  # the served top-1: a checkpoint of other classes is named
                    explained = explainer.explain_bytes(data, name, result.top1.label)
                png = base64.b64encode(explained.overlay_png()).decode()
                answer["overlay"] = f"data:image/png;base64,{png}"
            except UserError as exc:
                answer["overlay_error"] = f"no Grad-CAM overlay: {exc}"
        return answer

    if review is not None:
        add_review_routes(app, review)
    return app


def refused(exc: UserError):
    """A review error as JSON: 404 for a capture that is not there, 422 for a decision
    that cannot be taken, 500 for a folder that cannot be read."""
    from fastapi.responses import JSONResponse

    status = 500
    if isinstance(exc, UnknownCapture):
        status = 404
    elif isinstance(exc, ReviewError):
        status = 422
    return JSONResponse({"error": str(exc)}, status_code=status)


def decision_of(body: bytes) -> dict:
    """The POSTed decision, {"label": ..., "by"?: ...}; a ValueError names what is wrong."""
    if len(body) > MAX_DECISION_BYTES:
        raise ValueError(f"a decision is at most {MAX_DECISION_BYTES} bytes, got {len(body)}")
    try:
        decision = json.loads(body)
    except ValueError:
        raise ValueError(f'the body must be JSON, {{"label": ...}}, got {body[:80]!r}') from None
    if not isinstance(decision, dict) or "label" not in decision:
        raise ValueError(f'a decision is a JSON object with a "label", got {decision!r:.80}')
    extra = sorted(set(decision) - {"label", "by"})
    if extra:
        raise ValueError(f'unknown fields {extra}: a decision has "label" and "by"')
    return decision


def add_review_routes(app, review: Review) -> None:
    from fastapi import Request, Response
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    @app.get("/api/review")
    def queue():
        try:
            return review.state()
        except UserError as exc:
            return refused(exc)

    @app.get("/api/review/{capture}/image")
    def image(capture: str):
        try:
            path = review.image(capture)
            media_type = review.media_type(path)
            data = path.read_bytes()
        except UserError as exc:
            return refused(exc)
        except OSError:  # evicted since it was found
            return JSONResponse({"error": f"capture {capture} is gone"}, status_code=404)
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-store"})

    @app.post("/api/review/{capture}")
    async def decide(capture: str, request: Request):
        try:
            decision = decision_of(await request.body())
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:  # files and the log off the event loop
            return await run_in_threadpool(
                review.decide, capture, decision["label"], decision.get("by")
            )
        except UserError as exc:
            return refused(exc)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-triton ui",
        description="A web page to try the served ensemble: top-k labels, latency and "
        "(with --checkpoint) Grad-CAM overlays of dropped or chosen images.",
    )
    parser.add_argument("--protocol", default="grpc", choices=sorted(PROTOCOLS))
    parser.add_argument(
        "--url", help="Triton's host:port (default localhost:8001 gRPC, :8000 HTTP)"
    )
    parser.add_argument("--model", default=Names().ensemble, help="default %(default)s")
    parser.add_argument(
        "--api-key", help=f"the inference key the server's proxy asks for (default: ${API_KEY_ENV})"
    )
    parser.add_argument("--checkpoint", help="checkpoint.pt of the served model: Grad-CAM overlays")
    parser.add_argument("--method", default="gradcam", help="gradcam (default) or gradcam++")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes the page")
    parser.add_argument("--port", type=int, default=7860)
    review = parser.add_argument_group("review (label captured traffic)")
    review.add_argument("--review", metavar="CAPTURES",
                        help="a capture folder: adds the Review tab")  # fmt: skip
    review.add_argument("--labelled", metavar="DIR", help="where labelled images go (--review)")
    review.add_argument("--compare", metavar="REPORT_JSON", help="report.json of `resnet-triton "
                        "compare`: its disagreements first")  # fmt: skip
    review.add_argument("--reviewer", help="the name recorded when the page gives none "
                        "(default: the OS user)")  # fmt: skip
    return parser


def os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container's bare uid)
        return f"uid {os.getuid()}"


def check_review_flags(args: argparse.Namespace) -> None:
    if args.review is None:
        given = [f for f in ("labelled", "compare", "reviewer") if getattr(args, f) is not None]
        if given:
            raise UserError(f"--{given[0]} needs --review CAPTURES")
    elif args.labelled is None:
        raise UserError("--review needs --labelled DIR: where the labelled images go")


def review_of(args: argparse.Namespace, classifier: Classifier) -> Review | None:
    """The review that --review asks for (the served model's labels its classes), or None."""
    if args.review is None:
        return None
    compared = read_compared(Path(args.compare)) if args.compare else None
    return Review(Path(args.review), Path(args.labelled), served_labels(classifier),
                  args.reviewer or os_user(), compared)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise UserError(NEEDS_EXTRA) from None
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {args.top_k}")
    check_review_flags(args)
    explainer = None
    if args.checkpoint:  # PyTorch only for the overlays: without them the page needs none
        from resnet_triton.explain import Explainer

        explainer = Explainer.from_checkpoint(args.checkpoint, args.method)
    # Fails if not served, or if the proxy refuses the key.
    with Classifier(args.url, args.protocol, args.model, api_key=args.api_key) as classifier:
        app = create_app(classifier, explainer, args.top_k, review_of(args, classifier))
        print(f"the page: http://{args.host}:{args.port}/ ({args.model} at {classifier.url}, "
              f"{args.protocol})", flush=True)  # fmt: skip
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
