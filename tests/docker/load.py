"""Clients sending images one per request while something happens to the server."""

from __future__ import annotations

import threading
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
