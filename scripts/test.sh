#!/usr/bin/env bash
# The test command: starts what the tests need on a fresh machine (the Docker
# daemon), then runs every test. The end-to-end tests need root and fail,
# rather than skip, when the daemon cannot be reached.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

dockerd_pid=$(scripts/docker-up.sh)
if [ -n "$dockerd_pid" ]; then
  trap 'kill "$dockerd_pid" 2>/dev/null || true' EXIT
fi

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...
go test -count=1 -timeout 20m "$@" ./...
