"""Clients sending images one per request while something happens to the server, and
a body of one-byte chunks (CVE-2025-23310/23311) sent as an attacker would."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from resnet_triton.client import Classifier, ClientError
from resnet_triton.spec import Names


def send_under_load(classifier: Classifier, images: list[bytes], after: int, action: Callable,
                    clients: int = 8):  # fmt: skip
    """Send `images` from `clients` threads; once `after` have an outcome, call `action()`.

    Returns (outcomes, what action returned); an outcome is None for an answer, else the
    client's error.
    """
    outcomes: list[str | None] = []
    lock = threading.Lock()
    under_load = threading.Event()

    def send(share: list[bytes]) -> None:
        for image in share:
            try:
                (answer,) = classifier.classify_bytes([image])
                outcome = None if answer else "empty answer"
            except ClientError as exc:
                outcome = str(exc)
            with lock:
                outcomes.append(outcome)
                if len(outcomes) == after:
                    under_load.set()

    threads = [threading.Thread(target=send, args=(images[i::clients],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    assert under_load.wait(180), "the clients got no answers"
    result = action()
    for thread in threads:
        thread.join()
    return outcomes, result


def send_during(classifier: Classifier, images: list[bytes], action: Callable,
                clients: int = 8):  # fmt: skip
    """Send `images` one per request, round and round, from `clients` threads while
    `action()` runs, and a few more after it returned.

    Returns (sent, what action returned): per request, (its Result, whether it was sent
    after action returned).
    """
    sent: list[tuple] = []
    lock = threading.Lock()
    done, stop = threading.Event(), threading.Event()

    def send(offset: int) -> None:
        index = offset
        while not stop.is_set():
            after = done.is_set()
            (result,) = classifier.classify([images[index % len(images)]])
            with lock:
                sent.append((result, after))
            index += clients

    threads = [threading.Thread(target=send, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    try:
        result = action()
    finally:
        done.set()
        while all(t.is_alive() for t in threads):
            with lock:
                if sum(after for _, after in sent) >= 4 * clients:
                    break
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join()
    return sent, result


def chunked_post(port: int, chunks: int, headers: str = "") -> bytes:
    """A request body of `chunks` one-byte chunks, with extra header lines ("Name: value\r\n"
    each); the start of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as connection:
        connection.sendall(
            f"POST /v2/models/{Names().ensemble}/infer HTTP/1.1\r\nHost: localhost\r\n{headers}"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        block = b"1\r\nA\r\n" * 100_000
        for _ in range(chunks // 100_000):
            connection.sendall(block)
        connection.sendall(b"0\r\n\r\n")
        return connection.recv(4096)
