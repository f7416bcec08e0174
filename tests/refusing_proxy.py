"""Stand-ins for the proxy's refusals (docker/nginx), for tests that need no Docker: an HTTP
and a gRPC server that record the `authorization` each request carries and answer with
the refusals nginx sends (401/403/429 JSON bodies; UNAUTHENTICATED, PERMISSION_DENIED,
RESOURCE_EXHAUSTED trailers). They stand in for the proxy's door only, never for Triton:
nothing here answers an inference. The real nginx is tested end to end in tests/docker."""

from __future__ import annotations

import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

# What the proxy answers (the contract of issue 36): HTTP status, gRPC status, message.
REFUSALS = {
    "no key": (401, grpc.StatusCode.UNAUTHENTICATED, "no API key: send Authorization: Bearer"),
    "unknown key": (403, grpc.StatusCode.PERMISSION_DENIED, "unknown API key"),
    "throttled": (429, grpc.StatusCode.RESOURCE_EXHAUSTED,
                  "rate limit exceeded for this client: retry after 2 s"),
}  # fmt: skip


class RefusingHTTP:
    """Answers every request with `refusal`; `seen` holds (path, authorization header)."""

    def __init__(self, refusal: str):
        status, _, message = REFUSALS[refusal]
        self.seen: list[tuple[str, str | None]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                seen.append((self.path, self.headers.get("authorization")))
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 429:
                    self.send_header("Retry-After", "2")
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> RefusingHTTP:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class RefusingGRPC:
    """Answers every call with `refusal`; `seen` holds (method, authorization metadata)."""

    def __init__(self, refusal: str):
        _, code, message = REFUSALS[refusal]
        self.seen: list[tuple[str, str | None]] = []
        seen = self.seen

        class Refuse(grpc.GenericRpcHandler):
            def service(self, details):
                metadata = dict(details.invocation_metadata)
                seen.append((details.method, metadata.get("authorization")))

                def refuse(request, context):
                    context.abort(code, message)

                return grpc.unary_unary_rpc_method_handler(refuse)

        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        self.server.add_generic_rpc_handlers((Refuse(),))
        self.url = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def __enter__(self) -> RefusingGRPC:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(0)


def refusing(protocol: str, refusal: str) -> RefusingHTTP | RefusingGRPC:
    return RefusingGRPC(refusal) if protocol == "grpc" else RefusingHTTP(refusal)
