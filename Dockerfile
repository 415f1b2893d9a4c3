# syntax=docker/dockerfile:1
# nacre's container image: one image for `nacre serve` (attestation service + KBS) and every
# `nacre k8s ...` component (device plugin, node agent, webhook, webhook-certs, init-secrets).
#
#   docker build -t ghcr.io/nacre-dev/nacre:0.1.0 .
#
# Stage 1 builds nacre's wheel and installs it with its runtime dependencies (never the `dev`
# extra) into a virtual environment; stage 2 copies only that environment onto the same slim
# Python base, so no compiler, pip cache or source tree ships. Pods run it as UID/GID 10001 with
# a read-only root filesystem (bytecode is compiled at build time).
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m venv /opt/nacre \
 && /opt/nacre/bin/pip install /dist/nacre-*.whl \
 && /opt/nacre/bin/python -m compileall -q /opt/nacre/lib \
 && /opt/nacre/bin/nacre --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="nacre" \
      org.opencontainers.image.description="TEE attestation, key broker and confidential computing on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/nacre-dev/nacre"
RUN groupadd --system --gid 10001 nacre \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/nacre --no-create-home \
      --shell /usr/sbin/nologin nacre \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/nacre
COPY --from=build /opt/nacre /opt/nacre
ENV PATH=/opt/nacre/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/nacre
USER 10001:10001
WORKDIR /var/lib/nacre
EXPOSE 8080 8443
ENTRYPOINT ["nacre"]
CMD ["--help"]
