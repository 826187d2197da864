#!/usr/bin/env bash
# Installs the real servers the tests run against, if missing:
#   - versitygw (an S3-compatible gateway), built with go install into the
#     test cache (about 3.5 minutes cold; kept between runs where the cache is);
#   - OpenSSH's sshd, from Debian's openssh-server;
#   - busybox-static, e2fsprogs, losetup, docker-compose, age and zstd, from
#     Debian.
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

# Debian packages: sshd; a static busybox, the shell of the tests' FROM
# scratch images (containers that use a volume while it is restored);
# mkfs.ext4 and losetup for a volume on a block device.
pkgs=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || pkgs+=(openssh-server)
[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] && [ -x /bin/busybox ] || pkgs+=(busybox-static)
command -v mkfs.ext4 >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.ext4 ] || pkgs+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || [ -x /usr/sbin/losetup ] || pkgs+=(mount)
# docker-compose 1.29 (Debian's): the test that runs examples/compose.yaml.
command -v docker-compose >/dev/null 2>&1 || pkgs+=(docker-compose)
# age and zstd: an encrypted archive opened by hand, as the README shows.
command -v age >/dev/null 2>&1 || pkgs+=(age)
command -v zstd >/dev/null 2>&1 || pkgs+=(zstd)
if [ ${#pkgs[@]} -gt 0 ]; then
	echo "test-deps: installing ${pkgs[*]}" >&2
	if [ "$(id -u)" -ne 0 ]; then
		echo "test-deps: installing ${pkgs[*]} needs root (apt-get install ${pkgs[*]})" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
	apt_get install -y -q "${pkgs[@]}" >/dev/null || { apt_get update -q >/dev/null && apt_get install -y -q "${pkgs[@]}" >/dev/null; }
	# The tests run their own sshd on a loopback port; the package's own
	# service (port 22) is not needed.
	if command -v systemctl >/dev/null 2>&1; then systemctl disable --now ssh >/dev/null 2>&1 || true; fi
fi
echo "test-deps: versitygw at $cache/bin/versitygw, sshd at $(command -v sshd || echo /usr/sbin/sshd)" >&2
