"""Clients sending images one per request while something happens to the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from resnet_triton.client import Classifier, ClientError


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
