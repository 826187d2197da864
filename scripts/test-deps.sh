#!/usr/bin/env bash
# Installs the real servers the tests run against, if missing:
#   - versitygw (an S3-compatible gateway), built with go install into the
#     test cache (about 3.5 minutes cold; kept between runs where the cache is);
#   - OpenSSH's sshd, from Debian's openssh-server.
# The tests start them on 127.0.0.1 themselves and stop them by PID.
set -euo pipefail

VERSITYGW_VERSION=v1.8.0
cache="${VOLBAK_TEST_CACHE:-$HOME/.cache/volbak-test}"
mkdir -p "$cache/bin"

# The binary's build info names the module version it was built from.
if [ ! -x "$cache/bin/versitygw" ] || ! go version -m "$cache/bin/versitygw" 2>/dev/null | grep -q "github.com/versity/versitygw[[:space:]]*$VERSITYGW_VERSION"; then
	echo "test-deps: building versitygw $VERSITYGW_VERSION into $cache/bin (a few minutes, once)" >&2
	GOBIN="$cache/bin" CGO_ENABLED=0 go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
fi

if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
	echo "test-deps: installing openssh-server" >&2
	if [ "$(id -u)" -ne 0 ]; then
		echo "test-deps: sshd is missing and installing it needs root (apt-get install openssh-server)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
	apt_get install -y -q openssh-server >/dev/null || { apt_get update -q >/dev/null && apt_get install -y -q openssh-server >/dev/null; }
	# The tests run their own sshd on a loopback port; the package's own
	# service (port 22) is not needed.
	if command -v systemctl >/dev/null 2>&1; then systemctl disable --now ssh >/dev/null 2>&1 || true; fi
fi
echo "test-deps: versitygw at $cache/bin/versitygw, sshd at $(command -v sshd || echo /usr/sbin/sshd)" >&2
