#!/usr/bin/env bash
# Builds the volbak image without a registry: the binary is built on this
# host (static), and the Dockerfile's FROM scratch stage packs it with the
# host's CA certificates. Usage: scripts/image.sh [VERSION] (tags volbak:VERSION
# and volbak:latest, the image examples/compose.yaml names).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
mkdir -p bin
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$version" -o bin/volbak ./cmd/volbak
certs=/etc/ssl/certs/ca-certificates.crt
if [ ! -f "$certs" ]; then
  apt-get update -qq && apt-get install -y -qq ca-certificates
fi
cp "$certs" bin/ca-certificates.crt
DOCKER_BUILDKIT=0 docker build -q --target prebuilt -t "volbak:$version" -t volbak:latest . >/dev/null
echo "volbak:$version"
