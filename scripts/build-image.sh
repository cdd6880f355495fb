#!/usr/bin/env bash
# Builds the image with podman on a machine without a Docker engine (as this project's CI machine):
# chroot isolation, the host's network, the base image from scripts/base-image.sh (never pulled), and the
# host's CA bundle handed to pip when the way to PyPI needs it. Layers are cached by podman between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-localhost/ansible-runner-service:dev}
CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

flags=(--isolation chroot --network host --pull=never --layers)
if [[ -f $CA_BUNDLE ]]; then
  flags+=(-v "$CA_BUNDLE:/etc/pki/host-ca.crt:ro" --build-arg PIP_CERT=/etc/pki/host-ca.crt)
fi
start=$(date +%s)
podman build "${flags[@]}" -t "$IMAGE" . >&2
echo "build-image: $IMAGE built in $(( $(date +%s) - start )) s," \
  "$(podman image inspect --format '{{.Size}}' "$IMAGE") bytes" >&2
