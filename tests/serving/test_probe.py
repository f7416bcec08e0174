"""The health probe's contract with the serving images (its behaviour against a server:
tests/integration/test_python_models.py)."""

import subprocess
import sys

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
