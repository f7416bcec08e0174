"""docker/ngc-venv.sh, which makes /workspace/.venv in both NGC stages of the Dockerfile,
run for real on a stand-in for those images: Debian's python3 and pip without
python3-venv (so without ensurepip), as NVIDIA's images have them. The NGC images
themselves cannot be pulled here."""

import json
import os

import pytest
from conftest import ROOT, run

pytestmark = pytest.mark.docker

STAND_IN = "resnet-triton/ngc-stand-in:test"


@pytest.fixture(scope="module")
def stand_in(docker_engine) -> str:
    result = run(["docker/base-image.sh"], timeout=900)
    assert result.returncode == 0, result.stderr
    config = run(["docker", "compose", "config", "--format=json"],
                 env={**os.environ, "TRITON_ADMIN_KEY": "unused"})  # fmt: skip
    base = json.loads(config.stdout)["services"]["tritonserver"]["build"]["args"]["BASE_IMAGE"]
    dockerfile = (
        f"FROM {base}\n"
        "RUN apt-get update -qq \\\n"
        "    && apt-get install -y -qq --no-install-recommends python3-pip >/dev/null \\\n"
        "    && rm -rf /var/lib/apt/lists/* \\\n"
        "    && dpkg --purge --force-depends python3-venv python3.11-venv >/dev/null\n"
    )
    built = run(["docker", "build", "--quiet", f"--tag={STAND_IN}", "-"], input=dockerfile,
                timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr
    return STAND_IN


def in_stand_in(image: str, script: str) -> str:
    result = run(["docker", "run", "--rm", f"--volume={ROOT}:/src:ro", image, "sh", "-c", script])
    return result.stdout + result.stderr


def test_the_stand_in_lacks_ensurepip_like_the_ngc_images(stand_in):
    # What the Dockerfile's engine stage ran before: it stops the build.
    output = in_stand_in(stand_in, "python3 -m venv --system-site-packages /tmp/venv; echo $?")
    assert "ensurepip is not\navailable" in output and output.endswith("1\n")


def test_ngc_venv_installs_the_package_into_its_own_environment(stand_in):
    script = (
        "mkdir /tmp/project && cp -r /src/pyproject.toml /src/README.md /src/src /tmp/project"
        " && sh /src/docker/ngc-venv.sh /workspace/.venv --quiet --no-deps --no-build-isolation"
        " /tmp/project"
        " && /workspace/.venv/bin/python -c 'import resnet_triton.spec, sys; print(sys.prefix)'"
        " && /workspace/.venv/bin/python -m pip list --disable-pip-version-check"
    )
    output = in_stand_in(stand_in, script)
    assert "\n/workspace/.venv\n" in f"\n{output}", output
    assert "resnet-triton 0.1.0" in " ".join(output.split()), output
