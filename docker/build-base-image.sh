#!/usr/bin/env bash
# Build the images offline: a Debian base with python3 made by mmdebstrap
# (no registry needed), and a wheelhouse of the project and its dependencies
# built on the host, installed in the image with `pip install --no-index`.
#
#   docker/build-base-image.sh            -> image gobucket-base:local, ./wheelhouse
#   BASE_IMAGE=gobucket-base:local docker compose up --build
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${BASE_TAG:-gobucket-base:local}
PY=${PYTHON:-python3}

if ! docker image inspect "$TAG" >/dev/null 2>&1; then
  command -v mmdebstrap >/dev/null || apt-get install -y mmdebstrap >/dev/null
  echo "building $TAG with mmdebstrap (about 30 s)"
  mmdebstrap --variant=apt --include=python3,python3-pip,python3-venv \
    --format=tar bookworm - | docker import -c 'CMD ["python3"]' - "$TAG" >/dev/null
fi

# The image's python3 decides which wheels fit: build them for it, on the host.
PYVER=$(docker run --rm "$TAG" python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
mkdir -p wheelhouse && rm -f wheelhouse/*.whl
"$PY" -m pip wheel -q --wheel-dir wheelhouse --no-deps .
"$PY" -m pip download -q --dest wheelhouse --only-binary=:all: \
  --python-version "$PYVER" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --implementation cp \
  $("$PY" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
# Debian's python3 refuses system-wide pip installs unless told otherwise.
echo "base image $TAG and wheelhouse ready ($(ls wheelhouse | wc -l) wheels)"
