# The GPU images (docker-compose.gpu.yml), both on the NGC release pinned in .env
# (TRITON_RELEASE); the CPU image is docker/cpu.Dockerfile.
#   triton  the Triton server, supervised by `resnet-triton serve`, plus what the
#           Python-backend models import
#   engine  the TensorRT container of the same release plus this package, to build plans
# Both put the project's environment at /workspace/.venv, which is where the model
# repository's EXECUTION_ENV_PATH ($$TRITON_MODEL_DIRECTORY/../../.venv) points
# when the repository is mounted at /workspace/model_repository. The images' python3
# (3.12 on 26.x) has pip but not python3-venv: docker/ngc-venv.sh makes the venv.
ARG TRITON_RELEASE

FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3 AS triton
COPY docker/ngc-venv.sh docker/requirements-serving.txt /tmp/
COPY pyproject.toml README.md /opt/resnet-triton/
COPY src /opt/resnet-triton/src
# Serving needs numpy, Pillow, ONNX Runtime and tritonclient (serve's supervisor),
# not PyTorch: the package goes in without its training dependencies. numpy<2: the
# 2.51 stub's empty outputs with numpy 2, kept until a GPU run shows the pinned
# release's stub without them.
RUN sh /tmp/ngc-venv.sh /workspace/.venv -r /tmp/requirements-serving.txt \
    && /workspace/.venv/bin/python -m pip install --no-cache-dir --no-deps --no-build-isolation \
        /opt/resnet-triton \
    && rm -rf /opt/resnet-triton /tmp/ngc-venv.sh /tmp/requirements-serving.txt
# KServe mounts the model repository at /mnt/models, where EXECUTION_ENV_PATH names
# /mnt/.venv (deploy/kserve/).
RUN ln -s /workspace/.venv /mnt/.venv
ENV PATH=/workspace/.venv/bin:$PATH
WORKDIR /workspace
# The image's unprivileged user (triton-server, uid 1000).
USER 1000

FROM nvcr.io/nvidia/tensorrt:${TRITON_RELEASE}-py3 AS engine
COPY docker/ngc-venv.sh /tmp/
COPY pyproject.toml README.md /opt/resnet-triton/
COPY src /opt/resnet-triton/src
# The container's own TensorRT (the version the plans must be built with) through
# system site-packages. Export and the gates' PyTorch reference run on the CPU, so
# PyTorch comes from its CPU index: PyPI's CUDA build needs a newer driver than the
# NGC images run on, and is gigabytes larger.
# The dali extra: `build` serializes the DALI preprocess model when a target's serving
# configuration asks for it (serving.preprocessing: dali).
RUN sh /tmp/ngc-venv.sh /workspace/.venv \
        --extra-index-url https://download.pytorch.org/whl/cpu "/opt/resnet-triton[dali]" \
    && rm -rf /opt/resnet-triton /tmp/ngc-venv.sh
ENV PATH=/workspace/.venv/bin:$PATH
WORKDIR /workspace
USER 1000
