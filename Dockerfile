# A gobucket node. Users who can pull images build it as is:
#     docker compose up --build
# Air-gapped hosts build a local base and a wheelhouse first:
#     docker/build-base-image.sh      (see the README)
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

WORKDIR /app
# wheelhouse/ holds wheels built on the host when offline (may be empty).
COPY wheelhouse/ /wheels/
COPY pyproject.toml README.md LICENSE* /app/
COPY gobucket_py/ /app/gobucket_py/
COPY examples/ /app/examples/
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN if ls /wheels/*.whl >/dev/null 2>&1; then \
        python3 -m pip install --no-cache-dir --no-index --find-links /wheels gobucket_py; \
    else \
        python3 -m pip install --no-cache-dir /app; \
    fi && rm -rf /wheels

ENV PYTHONUNBUFFERED=1 GOBUCKET_HOST=0.0.0.0 GOBUCKET_PORT=6666 \
    GOBUCKET_APP=examples.cluster.app:buckets
EXPOSE 6666 6666/udp
HEALTHCHECK --interval=2s --timeout=2s --retries=15 \
    CMD python3 -c "import socket; socket.create_connection(('127.0.0.1', 6666), 1)"
CMD ["gobucket-node"]
