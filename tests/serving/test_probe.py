"""The health probe's contract with the serving images (its behaviour against a server:
tests/integration/test_python_models.py)."""

import subprocess
import sys

from refusing_proxy import RefusingHTTP

from resnet_triton.client import API_KEY_ENV
from resnet_triton.serving import probe
from resnet_triton.serving.probe import serialized_bytes


def test_the_probe_imports_only_the_standard_library():
    """It is the Docker healthcheck; the renderer imports from it, never the other way."""
    script = (
        "import sys; before = {m.split('.')[0] for m in sys.modules}; "
        "import resnet_triton.serving.probe; "
        "after = {m.split('.')[0] for m in sys.modules}; "
        "print(' '.join(sorted(after - before - set(sys.stdlib_module_names))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["resnet_triton"]


def test_a_bytes_element_is_its_length_then_its_bytes():
    assert serialized_bytes(b"") == b"\x00\x00\x00\x00"
    assert serialized_bytes(b"\xff\xd8" * 150) == b"\x2c\x01\x00\x00" + b"\xff\xd8" * 150


KEY = "probe-key-0123456789abcdef"


def probed(*args: str) -> tuple[int, list]:
    """probe.main against the proxy's refusal; (its exit code, what the proxy saw)."""
    with RefusingHTTP("unknown key") as proxy:
        code = probe.main(["--url", proxy.url, "--timeout", "5", *args])
    return code, [auth for _, auth in proxy.seen]


def test_the_probe_sends_the_containers_key_where_its_file_exists(tmp_path, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    key_file = tmp_path / "healthcheck.key"
    monkeypatch.setattr(probe, "HEALTHCHECK_KEY_FILE", key_file)
    assert probed() == (1, [None])  # keys off: no file, no variable, no header
    monkeypatch.setenv(API_KEY_ENV, "from-the-environment-0123")
    assert probed() == (1, ["Bearer from-the-environment-0123"])
    key_file.write_text(KEY + "\n")  # the container's own key wins over the variable
    assert probed() == (1, [f"Bearer {KEY}"])
    other = tmp_path / "other.key"
    other.write_text("another-key-0123456789")  # a key file named, or a key given, wins
    assert probed("--api-key-file", str(other)) == (1, ["Bearer another-key-0123456789"])
    assert probed("--api-key", "given-key-0123456789") == (1, ["Bearer given-key-0123456789"])


def test_a_named_key_file_that_is_missing_is_said(tmp_path, capsys):
    missing = tmp_path / "nowhere.key"
    assert probe.main(["--url", "127.0.0.1:1", "--api-key-file", str(missing)]) == 1
    assert f"cannot read the API key file {missing}" in capsys.readouterr().err


def test_the_probe_reads_the_clients_variable():
    assert probe.API_KEY_ENV == API_KEY_ENV
