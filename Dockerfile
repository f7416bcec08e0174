# The GPU images (docker-compose.gpu.yml), both on the NGC release pinned in .env
# (TRITON_RELEASE); the CPU image is docker/cpu.Dockerfile.
#   triton  the Triton server plus what the Python-backend models import
#   engine  the TensorRT container of the same release plus this package, to build plans
# Both put the project's environment at /workspace/.venv, which is where the model
# repository's EXECUTION_ENV_PATH ($$TRITON_MODEL_DIRECTORY/../../.venv) points
# when the repository is mounted at /workspace/model_repository.
ARG TRITON_RELEASE

FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3 AS triton
COPY pyproject.toml README.md /opt/resnet-triton/
COPY src /opt/resnet-triton/src
# Serving needs numpy, Pillow and ONNX Runtime, not PyTorch: the package goes in
# without its training dependencies. numpy<2: the 2.51 stub's empty outputs with
# numpy 2, kept until a GPU run shows the pinned release's stub without them.
# virtualenv, not venv: Triton's image installs virtualenv but not python3-venv; its
# python3 (3.12 on 26.x) is the one its Python-backend stub is built for.
RUN virtualenv /workspace/.venv \
    && /workspace/.venv/bin/pip install --no-cache-dir "numpy<2" pillow onnxruntime \
    && /workspace/.venv/bin/pip install --no-cache-dir --no-deps /opt/resnet-triton
WORKDIR /workspace
# The image's unprivileged user (triton-server, uid 1000).
USER 1000

FROM nvcr.io/nvidia/tensorrt:${TRITON_RELEASE}-py3 AS engine
COPY pyproject.toml README.md /opt/resnet-triton/
COPY src /opt/resnet-triton/src
# --system-site-packages: the container's own TensorRT Python package, the
# version the plans must be built with.
RUN python3 -m venv --system-site-packages /workspace/.venv \
    && /workspace/.venv/bin/pip install --no-cache-dir /opt/resnet-triton
ENV PATH=/workspace/.venv/bin:$PATH
WORKDIR /workspace
USER 1000
