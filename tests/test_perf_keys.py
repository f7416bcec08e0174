"""perf/ passes the proxy's inference key to NVIDIA's perf_analyzer, on both protocols,
and keeps it out of what it prints. perf_analyzer itself runs, against a stand-in for the
proxy's refusal that records what arrives (tests/refusing_proxy.py)."""

import argparse
import sys
from pathlib import Path

import pytest
from conftest import PHOTOS
from refusing_proxy import refusing

from resnet_triton.serving.server import Ports

sys.path.insert(0, str(Path(__file__).parent.parent / "perf"))
from perf_tools import REDACTED, ensemble_input, run_perf_analyzer  # noqa: E402

KEY = "perf-key-0123456789abcdef"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_sends_the_key_and_the_printed_command_hides_it(protocol, tmp_path, capsys):
    data = ensemble_input(PHOTOS[:1], "IMAGE", tmp_path / "input.json")
    with refusing(protocol, "unknown key") as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        with pytest.raises(RuntimeError, match="perf_analyzer failed"):
            run_perf_analyzer("resnet_ensemble", Ports(http=port, grpc=port), data, "1",
                              tmp_path / "out.csv", 500, protocol=protocol, host="127.0.0.1",
                              api_key=KEY)  # fmt: skip
    # Its first call, the model's metadata, carried the key; a refusal ends the run.
    assert proxy.seen and all(auth == f"Bearer {KEY}" for _, auth in proxy.seen), proxy.seen
    out = capsys.readouterr().out
    assert f"-H 'authorization:Bearer {REDACTED}'" in out and KEY not in out, out


def test_the_sweep_checks_a_served_model_with_the_key_first(tmp_path, monkeypatch):
    sweep = pytest.importorskip("sweep")
    with refusing("grpc", "unknown key") as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        monkeypatch.setattr(sweep, "Ports", lambda: Ports(grpc=port))
        args = argparse.Namespace(served="127.0.0.1", api_key=KEY)
        with pytest.raises(SystemExit) as stopped, sweep.target(args, "m", tmp_path / "log"):
            pass
    assert proxy.seen and all(auth == f"Bearer {KEY}" for _, auth in proxy.seen), proxy.seen
    assert "API key refused" in str(stopped.value) and KEY not in str(stopped.value)
