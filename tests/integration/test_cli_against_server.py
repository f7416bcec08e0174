"""`resnet-triton serve` and `resnet-triton classify` as a user runs them."""

import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import tritonclient.http as httpclient
from conftest import NAMES

from resnet_triton.cli import main
from resnet_triton.endpoints import LOOPBACK
from resnet_triton.serving.server import Ports

pytestmark = pytest.mark.integration


def test_classify_folder_prints_labels_and_fails_on_a_bad_file(triton, digits, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for digit in ("3", "7"):
        source = sorted((digits / "val" / digit).iterdir())[0]
        shutil.copy(source, folder / f"a_{digit}.png")
    (folder / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    argv = ["classify", str(folder), "--url", f"localhost:{triton.ports.http}"]
    code = main([*argv, "--protocol", "http", "--top-k", "2"])
    out = capsys.readouterr()
    assert code == 1
    lines = out.out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{folder}/a_3.png: 3 (")
    assert lines[1].startswith(f"{folder}/a_7.png: 7 (")
    assert lines[0].count("(") == 2  # top-2
    assert lines[2].startswith(f"{folder}/b_broken.png: ERROR ")
    assert "image 0: " in lines[2]
    assert "1 of 3 images failed" in out.err


def test_serve_waits_for_ready_and_stops_cleanly_on_sigterm(repository):
    ports = Ports.free()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "resnet_triton", "serve",
            "--repository", str(repository),
            "--http-port", str(ports.http),
            "--grpc-port", str(ports.grpc),
            "--metrics-port", str(ports.metrics),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        for line in process.stdout:
            if line.startswith(f"ready: {NAMES.ensemble}"):
                break
            assert time.monotonic() < deadline, "serve did not become ready"
        client = httpclient.InferenceServerClient(f"localhost:{ports.http}")
        assert client.is_model_ready(NAMES.ensemble)
        client.close()  # Triton waits for open connections before it exits
        for port in (ports.http, ports.grpc, ports.metrics):  # what "closed" is checked by
            socket.create_connection((LOOPBACK, port), timeout=5).close()
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=90)[0]
        print(rest)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "tritonserver stopped (exit code 0)" in rest
    for port in (ports.http, ports.grpc, ports.metrics):  # nothing listens any more
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, port), timeout=5).close()
