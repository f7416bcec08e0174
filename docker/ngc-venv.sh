#!/bin/sh
# usage: ngc-venv.sh VENV PIP-INSTALL-ARGUMENTS...
#
# The project's environment in an NGC image (Dockerfile). Their python3 has pip but
# not python3-venv, so `python3 -m venv` stops at ensurepip: the venv is made without
# pip, and the system's pip, visible through --system-site-packages, installs into it
# (pip installs into the interpreter that runs it, and a venv is not externally
# managed). System site-packages also give the engine stage the image's TensorRT.
# tests/docker/test_ngc_env.py runs this on Debian's python3 without python3-venv.
set -eu
venv=$1
shift
python3 -m venv --without-pip --system-site-packages "$venv"
"$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check "$@"
