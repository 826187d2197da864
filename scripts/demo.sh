#!/usr/bin/env bash
# A real round trip, start to end: build volbak, make a demo volume with a
# few awkward files, back it up, list, verify, restore it into a new volume,
# and compare the two; then change the source and restore it in place; then
# run the sidecar once, as a container. Needs Go, Docker, and root (it writes the demo files
# through the volume's mountpoint). Backups go to ./demo-backups.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
scripts/docker-up.sh >/dev/null

CGO_ENABLED=0 go build -o bin/volbak ./cmd/volbak
src=volbak-demo
dst=volbak-demo-restored
cleanup() { docker volume rm -f "$src" "$dst" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

docker volume create --label app=demo "$src" >/dev/null
mp=$(docker volume inspect -f '{{.Mountpoint}}' "$src")
mkdir -p "$mp/conf" "$mp/empty-dir"
seq 1 100000 >"$mp/numbers.txt"
echo 'secret=1' >"$mp/conf/app.conf" && chmod 600 "$mp/conf/app.conf" && chown 999:999 "$mp/conf/app.conf"
ln -s conf/app.conf "$mp/config-link"
ln "$mp/numbers.txt" "$mp/numbers-hardlink.txt"
truncate -s 1G "$mp/sparse.img" && echo tail >>"$mp/sparse.img"

set -x
bin/volbak backup "$src" --to ./demo-backups
bin/volbak list --from ./demo-backups
bin/volbak verify "$src" --from ./demo-backups
bin/volbak restore "$src" --from ./demo-backups --to-volume "$dst"
{ set +x; } 2>/dev/null

rp=$(docker volume inspect -f '{{.Mountpoint}}' "$dst")
echo "labels of the restored volume: $(docker volume inspect -f '{{json .Labels}}' "$dst")"
echo "sparse.img: $(du -h "$rp/sparse.img" | cut -f1) on disk for $(du -h --apparent-size "$rp/sparse.img" | cut -f1)"
# Content, owners, modes and times, compared entry by entry.
describe() { (cd "$1" && find . -printf '%p %y %m %U:%G %s %T@ %l\n' | sort); }
if diff <(describe "$mp") <(describe "$rp") && diff -r "$mp" "$rp" >/dev/null 2>&1; then
  echo "demo: restored volume is identical to its source"
else
  echo "demo: restored volume differs from its source" >&2
  exit 1
fi

# In place: the source changes after the snapshot; restoring it in place
# brings back exactly the snapshot (what was added since goes), switched
# in only once the whole archive checked out.
rm -f "$mp/conf/app.conf" && echo 'written after the backup' >"$mp/new-file"
set -x
bin/volbak restore "$src" --from ./demo-backups --in-place
{ set +x; } 2>/dev/null
if diff <(describe "$rp") <(describe "$mp") && diff -r "$rp" "$mp" >/dev/null 2>&1; then
  echo "demo: the in-place restore brought the source back to its snapshot"
else
  echo "demo: the in-place restore differs from the snapshot" >&2
  exit 1
fi

# The sidecar: the image built from this binary (no registry), run once
# as a container with the socket, as examples/compose.yaml runs it on a
# schedule: it backs up the volumes labelled app=demo and keeps the 2
# newest snapshots of each.
image=$(scripts/image.sh)
set -x
docker run --rm -v /var/run/docker.sock:/var/run/docker.sock -v "$PWD/demo-backups:/backups" \
  -e VOLBAK_SCHEDULE=@daily -e VOLBAK_TO=/backups -e VOLBAK_VOLUME_LABEL=app=demo -e VOLBAK_KEEP=last=2 \
  "$image" run --once
bin/volbak list --from ./demo-backups --volume "$src"
{ set +x; } 2>/dev/null
echo "demo: the sidecar backed $src up (volbak run --once); examples/compose.yaml runs it on a schedule"
