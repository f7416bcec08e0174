# The CPU serving image (docker-compose.yml's `tritonserver`): tritonserver 2.51
# from the nvidia-pytriton wheel (Python backend only), ONNX Runtime and the package
# without PyTorch, behind nginx; no GPU. Build context: the repository root.
#
# The base: Python 3.11 (the Python of the pytriton wheel's backend stub) on Debian
# bookworm. Where Docker Hub is closed, `make base-image` builds an equivalent
# locally and names it in docker-compose.override.yml.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin triton-server
# docker/ca-certificates/*.crt (gitignored, empty by default): CAs of a TLS-inspecting
# proxy, trusted by pip during this step only; nothing of them stays in the image.
COPY docker/requirements-serving.txt /tmp/requirements-serving.txt
RUN --mount=type=bind,source=docker/ca-certificates,target=/tmp/extra-ca \
    cat /etc/ssl/certs/ca-certificates.crt > /tmp/ca.pem \
    && find /tmp/extra-ca -name "*.crt" -exec cat {} + >> /tmp/ca.pem \
    && python3 -m venv /workspace/.venv \
    && export PIP_CERT=/tmp/ca.pem PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    && /workspace/.venv/bin/pip install -q -r /tmp/requirements-serving.txt \
    && /workspace/.venv/bin/pip install -q --no-deps nvidia-pytriton==0.7.0 \
    && rm /tmp/ca.pem /tmp/requirements-serving.txt
COPY pyproject.toml README.md /opt/resnet-triton/
COPY src /opt/resnet-triton/src
# No build isolation: setuptools is in the venv, so this step needs no network.
# Triton's backend folder is assembled once here: the venv is read-only at run time.
RUN /workspace/.venv/bin/pip install -q --no-cache-dir --no-deps --no-build-isolation /opt/resnet-triton \
    && rm -rf /opt/resnet-triton \
    && /workspace/.venv/bin/python -c "from resnet_triton.serving.server import backend_directory as b; b()"
# jemalloc for tritonserver and its stubs (serve-cpu passes --allocator jemalloc): it
# held their memory flatter than glibc's malloc in the soak (deploy/README.md).
# nginx's regex substitution filter: the fence scrubs internal names from Triton's
# error bodies with it (docker/nginx/rest.conf).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjemalloc2 libnginx-mod-http-subs-filter \
    && rm -rf /var/lib/apt/lists/*
# nginx, the fence in front of Triton 2.51 (SECURITY.md): the main file and the parts
# the replicas' balancer includes too; `resnet-triton fence` writes the keys at start.
COPY docker/nginx.conf /etc/resnet-triton/nginx.conf
COPY docker/nginx/ /etc/resnet-triton/nginx/
COPY docker/serve-cpu.sh /usr/local/bin/serve-cpu
# KServe mounts the model repository at /mnt/models: the models' EXECUTION_ENV_PATH
# ($$TRITON_MODEL_DIRECTORY/../../.venv) then names /mnt/.venv (deploy/kserve/).
RUN ln -s /workspace/.venv /mnt/.venv
# Captured live traffic (serving/capture.py), when switched on: a volume mounted here
# starts with this owner and mode, so only the server's user (and root) reads it.
RUN install -d -o 1000 -g 1000 -m 0750 /captures
ENV PATH=/workspace/.venv/bin:$PATH
WORKDIR /workspace
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["serve-cpu"]

