# The chart's model-store copier where amazon/aws-cli (its default syncImage.s3) cannot
# be pulled: the aws CLI from PyPI on the project's base image. tests/deploy/test_pod.py
# runs the chart's pod with it. Build context: the repository root.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE}
# docker/ca-certificates/*.crt: a TLS-inspecting proxy's CAs, for pip in this step only.
RUN --mount=type=bind,source=docker/ca-certificates,target=/tmp/extra-ca \
    cat /etc/ssl/certs/ca-certificates.crt > /tmp/ca.pem \
    && find /tmp/extra-ca -name "*.crt" -exec cat {} + >> /tmp/ca.pem \
    && python3 -m venv /opt/aws \
    && PIP_CERT=/tmp/ca.pem PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
       /opt/aws/bin/pip install -q awscli==1.46.3 \
    && ln -s /opt/aws/bin/aws /usr/local/bin/aws \
    && rm /tmp/ca.pem
USER 1000
