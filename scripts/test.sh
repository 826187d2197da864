#!/usr/bin/env bash
# The test command: installs and starts what the tests need on a fresh machine
# (the Docker daemon; versitygw, an S3 server, and OpenSSH's sshd, which the
# tests themselves start on 127.0.0.1 and stop by PID), then runs every test.
# The end-to-end tests need root and fail, rather than skip, when the daemon
# or a server cannot be found. Last, every fuzz target runs for a short
# while (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

# The S3 server takes minutes to build cold: do it while the daemon starts.
deps_log=$(mktemp)
scripts/test-deps.sh >"$deps_log" 2>&1 &
deps_pid=$!
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
if ! wait "$deps_pid"; then
  cat "$deps_log" >&2
  echo "test: could not install the test servers (scripts/test-deps.sh)" >&2
  exit 1
fi
cat "$deps_log" >&2
rm -f "$deps_log"
go test -count=1 -timeout 20m "$@" ./...
# Then a short run of every fuzz target (FUZZTIME each, 10s by default;
# FUZZ=0 skips it).
if [ "${FUZZ:-1}" != 0 ]; then
  scripts/fuzz.sh
fi
