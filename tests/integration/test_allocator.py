"""The allocator the server runs with (perf/soak.py --allocator; deploy/README.md, "Soak"):
jemalloc, when asked, is loaded into tritonserver and every Python-backend stub; the
default is glibc's malloc."""

from pathlib import Path

import pytest
from conftest import NAMES, PHOTOS, infer_images

from resnet_triton.serving.serve import python_stubs
from resnet_triton.serving.server import Ports, TritonServer, allocator_environment
from resnet_triton.spec import SpecError

pytestmark = pytest.mark.integration

JEMALLOC = "libjemalloc.so.2"


def loaded(pid: int) -> bool:
    return JEMALLOC in Path(f"/proc/{pid}/maps").read_text()


def test_jemalloc_runs_in_the_server_and_every_stub(repository, triton, tmp_path):
    server = TritonServer(
        repository, Ports.free(), log_path=tmp_path / "log", exit_timeout_s=3, allocator="jemalloc"
    )
    with server:
        server.wait_ready([NAMES.ensemble], timeout=180)
        processes = [server.process.pid, *python_stubs(server.process.pid)]
        assert len(processes) == 3  # tritonserver, the preprocess and classifier stubs
        assert all(loaded(pid) for pid in processes)
        infer_images(server.ports.grpc, [PHOTOS[0].read_bytes()])
    default = [triton.process.pid, *python_stubs(triton.process.pid)]
    assert not any(loaded(pid) for pid in default)


def test_an_unknown_allocator_is_named():
    with pytest.raises(SpecError) as error:
        allocator_environment("tcmalloc")
    assert str(error.value) == "unknown allocator 'tcmalloc'; choose one of glibc, jemalloc"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, JEMALLOC),
        ("libprofiler.so", f"libprofiler.so {JEMALLOC}"),  # kept, in front
        ("liba.so:libb.so", f"liba.so libb.so {JEMALLOC}"),  # ld.so's other separator
        (f"{JEMALLOC} liba.so", f"{JEMALLOC} liba.so"),  # there already: not twice
    ],
)
def test_jemalloc_is_added_to_the_preloads_already_there(tmp_path, monkeypatch, before, after):
    if before is None:
        monkeypatch.delenv("LD_PRELOAD", raising=False)
    else:
        monkeypatch.setenv("LD_PRELOAD", before)
    server = TritonServer(tmp_path, allocator="jemalloc")
    assert server.environment()["LD_PRELOAD"] == after
    assert allocator_environment("jemalloc", {"LD_PRELOAD": before or ""}) == {"LD_PRELOAD": after}
