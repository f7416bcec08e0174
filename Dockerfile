# The Triton image plus what the Python-backend models import. The model
# repository's EXECUTION_ENV_PATH ($$TRITON_MODEL_DIRECTORY/../../.venv) resolves
# to /workspace/.venv when the repository is mounted at /workspace/model_repository.
ARG TRITON_RELEASE
FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3

COPY pyproject.toml README.md /opt/resnet-triton/
COPY src /opt/resnet-triton/src
# Serving needs numpy, Pillow and ONNX Runtime, not PyTorch: install the package
# without its training dependencies. numpy<2: see DESIGN.md (empty outputs).
RUN python3 -m venv /workspace/.venv \
    && /workspace/.venv/bin/pip install --no-cache-dir "numpy<2" pillow onnxruntime \
    && /workspace/.venv/bin/pip install --no-cache-dir --no-deps /opt/resnet-triton
WORKDIR /workspace
