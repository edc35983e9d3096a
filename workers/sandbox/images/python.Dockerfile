# codeloop/sandbox-python: the official slim image, ruff for lint, run as nobody.
# Build: scripts/build-sandbox-images.sh --official (context: workers/sandbox).
FROM python:3.12-slim
ARG RUFF_VERSION=0.17.6
RUN pip install --no-cache-dir "ruff==${RUFF_VERSION}" \
    && mkdir -p /opt/codeloop/bin \
    && ln -s "$(command -v ruff)" /opt/codeloop/bin/ruff
USER 65534:65534
WORKDIR /tmp
