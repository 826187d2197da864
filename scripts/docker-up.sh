#!/usr/bin/env bash
# Makes sure a Docker daemon answers, as on a fresh CI machine: installs
# Debian's docker.io if dockerd is missing, and starts dockerd if it is not
# running. Prints the PID of a dockerd it started on stdout (nothing if the
# daemon was already up), so that the caller can stop exactly that one.
set -euo pipefail

if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker-up: installing docker.io" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq docker.io >&2
fi
if docker info >/dev/null 2>&1; then # the package may have started it
  exit 0
fi
echo "docker-up: starting dockerd" >&2
log=${TMPDIR:-/tmp}/volbak-dockerd.log
dockerd >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    echo "$pid"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "docker-up: dockerd exited; its log ($log):" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "docker-up: dockerd did not answer within 60s; its log ($log):" >&2
tail -20 "$log" >&2
kill "$pid" 2>/dev/null || true
exit 1
