#!/usr/bin/env bash
# bench/bench.sh: time volbak backup/restore against a plain
# "busybox tar | zstd" baseline (and, given its binary, offen's
# docker-volume-backup), on the same generated volume, in one run.
#
#   bash bench/bench.sh                        # 1 GiB mixed tree, 2 reps
#   SIZE=64MiB REPS=1 bash bench/bench.sh      # quick check
#
# Knobs (environment):
#   SIZE         voltree -size            (default 1GiB)
#   PROFILE      voltree -profile         (default mixed: mixed|small|big|edge)
#   REPS         repetitions per timed run, best (min) wall time is kept (default 2)
#   OFFEN        path to offen/docker-volume-backup's "backup" binary (go build
#                ./cmd/backup in its source tree): each rep also times it
#                backing up the source volume's host path into the work dir,
#                BACKUP_COMPRESSION=gz and =zst (one-shot, no docker socket;
#                see bench/compare.sh); unset (default): no offen rows
#   OFFEN_LABEL  free text naming that binary's version in the report
#   KEEP_IMAGES  if set, keep the volbakbench-busybox:1 image afterwards
#   ENCRYPT      1 (default): also volbak backup --encrypt-to and restore
#                --identity (age, a key generated in the work dir), each rep
#                beside the plain volbak runs, with the CPU time of volbak
#                and of its helper containers; 0 to skip
#   REMOTE       1 (default): also back up to and restore from S3 (versitygw)
#                and SFTP (OpenSSH sshd) on 127.0.0.1, started here via
#                internal/testsrv/serve and stopped by PID; 0 to skip
#   STALL_BOUND  --stall-timeout in seconds for the silent-destination row
#                (default 60, volbak's default)
#   FAULT_AFTER  seconds into that backup when S3 goes silent (default: half
#                the S3 backup's time, at most 10)
#   SERVERS_TMPFS  if 1, the servers keep their data on a tmpfs mounted for
#                the run, to tell the server's disk from volbak's own speed
#   SIDECAR      1 (default): also measure the scheduler sidecar (volbak run,
#                started here as a host process, not a container): its idle
#                RSS and CPU between runs, and one job backing up
#                SIDECAR_VOLUMES labelled volumes vs as many volbak backup
#                calls one after another; 0 to skip
#   ONLY_SIDECAR if 1, only the sidecar section (no source volume, no
#                busybox baseline, no backup/restore/remote rows)
#   SIDECAR_VOLUMES   labelled volumes for the sidecar run (default 50)
#   SIDECAR_VOL_SIZE  voltree -size of each, profile small (default 2MiB;
#                generated once and copied into the others)
#   SIDECAR_IDLE  seconds the idle daemon is sampled (default 60, after a
#                5 s settle)
#   SIDECAR_POST_IDLE  seconds it is sampled after a scheduled run of those
#                volumes (default 240: Go forces a GC every 2 minutes, then
#                returns pages)
#
# Needs: root, a local Docker daemon, Go (PATH or /usr/local/go/bin), apt-get
# (only if zstd, GNU time, busybox-static or, with ENCRYPT=1, age are missing);
# with OFFEN, unshare (util-linux).
#
# stdout is the Markdown result (also saved to bench/out/results-<date>.md);
# progress goes to stderr. Docker objects created: volumes volbakbench-*,
# containers volbakbench-*, image volbakbench-busybox:1. Nothing else is
# touched, except that volbak itself loads its volbak-helper:<version> image
# (left in place).
set -euo pipefail

SIZE=${SIZE:-1GiB}
PROFILE=${PROFILE:-mixed}
REPS=${REPS:-2}
REMOTE=${REMOTE:-1}
ENCRYPT=${ENCRYPT:-1}
STALL_BOUND=${STALL_BOUND:-60}
SERVERS_TMPFS=${SERVERS_TMPFS:-0}
SIDECAR=${SIDECAR:-1}
ONLY_SIDECAR=${ONLY_SIDECAR:-0}
SIDECAR_VOLUMES=${SIDECAR_VOLUMES:-50}
SIDECAR_VOL_SIZE=${SIDECAR_VOL_SIZE:-2MiB}
SIDECAR_IDLE=${SIDECAR_IDLE:-60}
SIDECAR_POST_IDLE=${SIDECAR_POST_IDLE:-240}
OFFEN=${OFFEN:-}
BB_IMAGE=volbakbench-busybox:1
SRC_VOL=volbakbench-src
WARM_VOL=volbakbench-warm

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
VOLTREE_SRC=$(cd "$REPO/../shared/tools/voltree" 2>/dev/null && pwd) || VOLTREE_SRC=$REPO/../shared/tools/voltree
OUT_DIR=$SCRIPT_DIR/out

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer, got '$REPS'"
[[ $SIDECAR_VOLUMES =~ ^[1-9][0-9]*$ ]] || die "SIDECAR_VOLUMES must be a positive integer, got '$SIDECAR_VOLUMES'"
[[ $SIDECAR_IDLE =~ ^[1-9][0-9]*$ ]] || die "SIDECAR_IDLE must be a positive integer, got '$SIDECAR_IDLE'"
[[ $SIDECAR_POST_IDLE =~ ^[1-9][0-9]*$ ]] || die "SIDECAR_POST_IDLE must be a positive integer, got '$SIDECAR_POST_IDLE'"
((SIDECAR || !ONLY_SIDECAR)) || die "ONLY_SIDECAR=1 with SIDECAR=0 leaves nothing to measure"
[[ $(id -u) == 0 ]] || die "must run as root (writes straight into volume mountpoints)"
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || die "go not found (PATH or /usr/local/go/bin)"
command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "docker daemon not reachable"
[[ -d $VOLTREE_SRC ]] || die "voltree sources not found at $VOLTREE_SRC"
if [[ -n $OFFEN ]]; then
	[[ -f $OFFEN && -x $OFFEN ]] || die "OFFEN is not an executable file: '$OFFEN'"
	OFFEN=$(realpath "$OFFEN")
	command -v unshare >/dev/null || die "OFFEN needs unshare (util-linux)"
fi

# One run at a time: cleanup removes every volbakbench-* object, so a second
# concurrent run would destroy the first one's volumes.
exec 9<"$SCRIPT_DIR/bench.sh"
flock -n 9 || die "another bench.sh run is going on (flock on $SCRIPT_DIR/bench.sh)"

# ------------------------------------------------------------------ cleanup

WORK=""
CHILD=""   # pid (= process group, via setsid) of the command being timed
SERVE_PID="" # the S3 + SFTP test servers' launcher
POLL_PID=""  # pid (= process group) of the sidecar section's helper poller
HCPU_PID=""  # pid (= process group) of the helper CPU pollers (helper_cpu_start)
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	if [[ -n $SERVE_PID ]]; then
		kill -TERM "$SERVE_PID" 2>/dev/null
		wait "$SERVE_PID" 2>/dev/null
		log "cleanup: stopped the test servers (pid $SERVE_PID)"
	fi
	if [[ -n $POLL_PID ]]; then
		kill -TERM -- "-$POLL_PID" 2>/dev/null
		wait "$POLL_PID" 2>/dev/null
	fi
	if [[ -n $HCPU_PID ]]; then
		kill -TERM -- "-$HCPU_PID" 2>/dev/null
		wait "$HCPU_PID" 2>/dev/null
	fi
	if [[ -n $WORK ]] && mountpoint -q "$WORK/servers" 2>/dev/null; then
		umount "$WORK/servers" && log "cleanup: unmounted the servers' tmpfs"
	fi
	if [[ -n $CHILD ]] && kill -0 "$CHILD" 2>/dev/null; then
		log "cleanup: stopping running command (pgid $CHILD)"
		kill -TERM -- "-$CHILD" 2>/dev/null
		# Wait (up to 40 s) until nothing but zombies is left in its session,
		# so that volbak can remove its helper container itself. (Seen: volbak
		# sometimes needs its full 30 s cleanup timeout after SIGTERM.)
		for _ in $(seq 200); do
			ps -o stat= -s "$CHILD" 2>/dev/null | grep -qv '^Z' || break
			sleep 0.2
		done
		kill -KILL -- "-$CHILD" 2>/dev/null
		wait "$CHILD" 2>/dev/null
	fi
	local c v
	# Our own containers (named volbakbench-*).
	for c in $(docker ps -a --filter name=volbakbench- --format '{{.Names}}' 2>/dev/null); do
		[[ $c == volbakbench-* ]] && docker rm -f "$c" >/dev/null 2>&1 && log "cleanup: removed container $c"
	done
	for v in $(docker volume ls -q --filter name=volbakbench- 2>/dev/null); do
		[[ $v == volbakbench-* ]] || continue
		if docker volume rm -f "$v" >/dev/null 2>&1; then
			log "cleanup: removed volume $v"
		else
			# volbak removes its helpers itself; give an interrupted one a moment.
			sleep 2
			docker volume rm -f "$v" >/dev/null 2>&1 && log "cleanup: removed volume $v" || log "cleanup: could not remove volume $v (in use by: $(docker ps -a --filter volume="$v" --format '{{.Names}}' | tr '\n' ' '))"
		fi
	done
	if [[ -z ${KEEP_IMAGES:-} ]] && docker image inspect "$BB_IMAGE" >/dev/null 2>&1; then
		docker image rm "$BB_IMAGE" >/dev/null 2>&1 && log "cleanup: removed image $BB_IMAGE"
	fi
	if [[ -n $WORK && -d $WORK ]]; then
		rm -rf -- "$WORK" && log "cleanup: removed $WORK"
	fi
	((rc == 0)) || log "exit status $rc"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ helpers

# run_timed NAME CMD...: runs CMD in its own process group (so cleanup can
# stop the whole pipeline), output to $WORK/logs/NAME.log; sets WALL (seconds,
# from date +%s%N around the command). On failure prints the log and exits.
WALL=""
run_timed() {
	local name=$1; shift
	local logf=$WORK/logs/$name.log t0 t1 rc=0
	# Every run starts with no dirty pages: otherwise a run pays for the
	# writeback of the one before it (restores leave 1 GiB dirty each).
	sync
	t0=$(date +%s%N)
	setsid "$@" >"$logf" 2>&1 </dev/null &
	CHILD=$!
	wait "$CHILD" || rc=$?
	CHILD=""
	t1=$(date +%s%N)
	if ((rc != 0)); then
		log "FAILED ($rc): $name: $*"
		log "---- output of $name ----"
		cat "$logf" >&2
		log "-------------------------"
		exit 1
	fi
	WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
}

# Peak RSS (KiB) from the "%e %M" file /usr/bin/time -o wrote.
rss_kib() { awk 'END{print $2}' "$1"; }

min() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b+0 < a+0) print b; else print a }'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b+0 > a+0) print b; else print a }'; }

mountpoint_of() { docker volume inspect -f '{{.Mountpoint}}' "$1"; }

# Field of the (single) manifest under DIR/VOLUME.
manifest_field() { # DIR FIELD
	local f
	f=$(ls "$1/$SRC_VOL"/*.json 2>/dev/null | head -n1 || true)
	[[ -n $f ]] || die "no manifest under $1/$SRC_VOL"
	{ grep -o "\"$2\":[[:space:]]*[^,}]*" "$f" || true; } | head -n1 | sed 's/^[^:]*:[[:space:]]*//; s/"//g; s/[[:space:]]*$//'
}

vol_rm() { docker volume rm -f "$1" >/dev/null 2>&1 || true; }

# The helper containers' CPU time in one timed run, from their cgroups:
# docker events names each helper labelled for VOLUME as it starts, and a
# poller reads its cgroup's CPU usage every 20 ms (bash builtins only:
# read, and read -t on a FIFO nobody writes for the sleep) until the
# cgroup goes with the container. The last reading is its total, short by
# what it used in the last 20 ms at most; a helper that came and went
# between two readings (volbak's "agent recover" before a backup, a few
# ms) counts 0. The pollers live in one process group (HCPU_PID).
# helper_cpu_start VOLUME FILE: FILE gets "start ID" as each helper starts
# and "done ID NANOSECONDS" when its cgroup is gone.
helper_cpu_start() {
	: >"$2"
	[[ -p $WORK/sleep.fifo ]] || mkfifo "$WORK/sleep.fifo"
	setsid bash -c 'vol=$1 out=$2 fifo=$3
		docker events --filter type=container --filter event=start --filter "label=io.volbak.volume=$vol" \
				--format "{{.Actor.ID}}" |
			while read -r id; do
				echo "start $id" >>"$out"
				(
					exec {z}<>"$fifo"
					last=0 f="" try
					# cgroup v1 (cgroupfs or systemd driver): ns; v2: usage_usec.
					for try in /sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage \
						/sys/fs/cgroup/cpuacct/system.slice/docker-$id.scope/cpuacct.usage \
						/sys/fs/cgroup/docker/$id/cpu.stat /sys/fs/cgroup/system.slice/docker-$id.scope/cpu.stat; do
						[[ -e $try ]] && { f=$try; break; }
					done
					if [[ $f == *cpu.stat ]]; then
						while read -r _ u 2>/dev/null <"$f"; do last=$((u * 1000)); read -t 0.02 -u "$z" || true; done
					elif [[ -n $f ]]; then
						while read -r u 2>/dev/null <"$f"; do last=$u; read -t 0.02 -u "$z" || true; done
					fi
					echo "done $id $last" >>"$out"
				) &
			done' _ "$1" "$2" "$WORK/sleep.fifo" </dev/null >/dev/null 2>&1 &
	HCPU_PID=$!
	sleep 0.5 # docker events is listening
}
# helper_cpu_stop FILE: waits (up to 10 s) for every started helper's
# poller to finish, stops the pollers and prints the helpers' CPU seconds.
helper_cpu_stop() {
	local starts dones
	for _ in $(seq 100); do
		starts=$(grep -c '^start ' "$1" || true) dones=$(grep -c '^done ' "$1" || true)
		((starts == dones)) && break
		sleep 0.1
	done
	((starts == dones)) || log "WARNING: $((starts - dones)) helper(s) still running 10 s after the command; their CPU is not counted"
	kill -TERM -- "-$HCPU_PID" 2>/dev/null
	wait "$HCPU_PID" 2>/dev/null || true
	HCPU_PID=""
	((starts > 0)) || log "WARNING: docker events saw no helper start in $1"
	awk '$1 == "done" { ns += $3 } END { printf "%.2f", ns / 1e9 }' "$1"
}

# The machine, for the report's last line.
machine() {
	local cpu ver root
	cpu=$(LC_ALL=C lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -n1)
	ver=$(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo unknown)
	root=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
	printf '%s CPUs, %s, kernel %s, Docker %s, %s on %s, %s' "$(nproc)" "${cpu:-unknown CPU}" "$(uname -r)" "$ver" \
		"$root" "$(df -PT "$root" | awk 'NR==2{print $2}')" "$(awk '/MemTotal/{printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
}

# ------------------------------------------------------------------ 1. tools

missing=()
command -v zstd >/dev/null || missing+=(zstd)
[[ -x /usr/bin/time ]] && /usr/bin/time -f '%e' true >/dev/null 2>&1 || missing+=(time)
# busybox must be static to run alone in a scratch image: the busybox-static
# package provides that (it replaces the dynamic "busybox" package).
[[ $(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null) == "install ok installed" && -x /bin/busybox ]] ||
	missing+=(busybox-static)
if ((ENCRYPT)) && ! command -v age-keygen >/dev/null; then missing+=(age); fi
if ((${#missing[@]})); then
	log "installing with apt-get: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq "${missing[@]}" >&2
fi
command -v zstd >/dev/null || die "zstd still missing"
[[ -x /usr/bin/time ]] || die "/usr/bin/time still missing"
[[ -x /bin/busybox ]] || die "/bin/busybox still missing"
if ((ENCRYPT)) && ! command -v age-keygen >/dev/null; then die "age-keygen still missing"; fi

WORK=$(mktemp -d /var/tmp/volbakbench.XXXXXX)
mkdir -p "$WORK/logs" "$OUT_DIR"
log "work dir $WORK"

# ------------------------------------------------------------------ 2. busybox image

log "building $BB_IMAGE (FROM scratch + static busybox)"
mkdir -p "$WORK/bbctx/bin"
cp /bin/busybox "$WORK/bbctx/bin/busybox"
cat >"$WORK/bbctx/Dockerfile" <<'EOF'
FROM scratch
COPY bin/busybox /bin/busybox
EOF
if ! DOCKER_BUILDKIT=0 docker build -q -t "$BB_IMAGE" "$WORK/bbctx" >"$WORK/logs/bbimage.log" 2>&1; then
	cat "$WORK/logs/bbimage.log" >&2
	die "docker build of $BB_IMAGE failed"
fi
docker run --rm --log-driver none --name "volbakbench-check-$$" "$BB_IMAGE" /bin/busybox true ||
	die "$BB_IMAGE does not run"

# ------------------------------------------------------------------ 3./4. build tools

log "building voltree ($VOLTREE_SRC)"
go build -C "$VOLTREE_SRC" -o "$WORK/voltree" . || die "voltree build failed"
log "building volbak ($REPO)"
(cd "$REPO" && CGO_ENABLED=0 go build -o "$WORK/volbak" ./cmd/volbak) || die "volbak build failed"
VOLTREE=$WORK/voltree
VOLBAK=$WORK/volbak
VOLBAK_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
VOLBAK_DIRTY=$( [[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]] && echo " (+ uncommitted changes)" || true)
if ((ENCRYPT)); then
	# In the work dir, so that cleanup removes it with everything else.
	age-keygen -o "$WORK/bench.key" 2>/dev/null || die "age-keygen failed"
	AGE_RECIPIENT=$(age-keygen -y "$WORK/bench.key") || die "age-keygen -y failed"
	log "age key generated in $WORK/bench.key ($AGE_RECIPIENT)"
fi

for v in $(docker volume ls -q --filter name=volbakbench- 2>/dev/null); do
	[[ $v == volbakbench-* ]] || continue
	log "removing volume $v left over from an earlier run"
	docker volume rm "$v" >/dev/null || die "cannot remove leftover volume $v"
done

# ------------------------------------------------------------------ sidecar

# The sidecar's measurements and report (sidecar_measure, sidecar_report)
# live in their own file, sourced here.
# shellcheck source=bench/sidecar.sh
source "$SCRIPT_DIR/sidecar.sh"
# offen's rows and the targets block.
# shellcheck source=bench/compare.sh
source "$SCRIPT_DIR/compare.sh"

if ((SIDECAR && ONLY_SIDECAR)); then
	WORK_FS=$(df -PT "$WORK" | awk 'NR==2{print $2}')
	sidecar_measure
	RESULT=$OUT_DIR/results-$(date +%Y%m%d-%H%M%S)-sidecar.md
	{
		echo "## volbak benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ), sidecar only"
		echo
		echo "volbak $VOLBAK_COMMIT$VOLBAK_DIRTY."
		echo
		sidecar_report
		echo "- Machine: $(machine)."
	} | tee "$RESULT"
	log "saved $RESULT"
	exit 0
fi

# ------------------------------------------------------------------ 5. source volume

docker volume create "$SRC_VOL" >/dev/null
SRC_MP=$(mountpoint_of "$SRC_VOL")
[[ -d $SRC_MP ]] || die "mountpoint $SRC_MP of $SRC_VOL is not visible here (daemon not local?)"
log "generating $PROFILE tree of $SIZE into $SRC_VOL ($SRC_MP)"
"$VOLTREE" gen -profile "$PROFILE" -size "$SIZE" -seed 1 "$SRC_MP" 2> >(sed 's/^/[voltree] /' >&2)
sync
VOL_BYTES=$(du -sb "$SRC_MP" | awk '{print $1}')
VOL_ALLOC=$(du -sk "$SRC_MP" | awk '{print $1 * 1024}')
log "source: $VOL_BYTES bytes apparent (du -sb), $VOL_ALLOC bytes allocated"

# ------------------------------------------------------------------ 6. warm-up

# On a VM, page cache grown into memory the guest never touched is slow to
# fill (each new page faults to the host), so a run's speed would depend on
# how much the runs before it wrote. Dropping caches hands back pages that
# are already backed; the runs then write into those.
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || log "cannot drop caches (not root on the host?)"; }
drop_caches
log "warm-up: reading the whole tree once (voltree hash) so every run reads from page cache"
SRC_HASH=$("$VOLTREE" hash "$SRC_MP")
log "source digest: $SRC_HASH"

log "warm-up: volbak backup of a tiny volume (loads the volbak-helper image, untimed)"
docker volume create "$WARM_VOL" >/dev/null
echo warm >"$(mountpoint_of "$WARM_VOL")/warm.txt"
run_timed warmup "$VOLBAK" backup "$WARM_VOL" --to "$WORK/warmstore" -q --log-format json
log "warm-up done in ${WALL}s"
vol_rm "$WARM_VOL"
rm -rf "$WORK/warmstore"

# ------------------------------------------------------------------ 7. measurements

declare -A BEST RSS OSIZE CPU HCPU REPWALL

# timed_volbak KEY NAME VOLUME ARGS...: runs volbak ARGS like the rows
# above (run_timed under /usr/bin/time), and with ENCRYPT=1 also sums the
# CPU time of the helpers serving VOLUME; keeps the best wall time in
# BEST[KEY], the CPU seconds of that rep in CPU[KEY] (volbak, user + sys)
# and HCPU[KEY] (its helpers), the max RSS in RSS[KEY], and every rep's
# wall time in REPWALL[KEY].
timed_volbak() {
	local k=$1 name=$2 vol=$3 cpu hcpu=""
	shift 3
	if ((ENCRYPT)); then helper_cpu_start "$vol" "$WORK/hcpu-$name.txt"; fi
	run_timed "$name" /usr/bin/time -f '%e %M %U %S' -o "$WORK/time.out" "$VOLBAK" "$@"
	if ((ENCRYPT)); then hcpu=$(helper_cpu_stop "$WORK/hcpu-$name.txt"); fi
	cpu=$(awk '{ printf "%.2f", $3 + $4 }' "$WORK/time.out")
	log "  ${WALL}s, peak RSS $(rss_kib "$WORK/time.out") KiB, CPU s: volbak $cpu, helpers ${hcpu:-(not measured)}"
	BEST[$k]=$(min "${BEST[$k]:-}" "$WALL")
	if [[ ${BEST[$k]} == "$WALL" ]]; then
		CPU[$k]=$cpu HCPU[$k]=$hcpu
	fi
	RSS[$k]=$(max "${RSS[$k]:-}" "$(rss_kib "$WORK/time.out")")
	REPWALL[$k]+="$WALL "
}

# The volbak runs of one rep, plain and (ENCRYPT=1) encrypted: which goes
# first alternates from rep to rep, so that neither always runs on the
# machine as the other left it.
rep_kinds() { # REP
	if ((!ENCRYPT)); then echo plain; elif (($1 % 2)); then echo plain enc; else echo enc plain; fi
}

# Backups, baseline and volbak taking turns, so that whatever the machine
# does meanwhile (writeback, other tenants) falls on both alike.
for ((i = 1; i <= REPS; i++)); do
	rm -f "$WORK/baseline.tar.zst"
	log "baseline backup rep $i/$REPS"
	run_timed "base-backup-$i" bash -c 'set -o pipefail
		docker run --rm --log-driver none --name "$1" -v "$2":/data:ro "$3" /bin/busybox tar -C /data -cf - . |
			zstd -T0 -3 -q >"$4"' _ "volbakbench-tar-$$-$i" "$SRC_VOL" "$BB_IMAGE" "$WORK/baseline.tar.zst"
	log "  ${WALL}s"
	BEST[base_backup]=$(min "${BEST[base_backup]:-}" "$WALL")

	# volbak and offen take turns going right after the baseline.
	if [[ -n $OFFEN ]] && ((i % 2 == 0)); then offen_rep "$i" zst gz; fi
	for kind in $(rep_kinds "$i"); do
		if [[ $kind == plain ]]; then
			rm -rf "$WORK/store"
			log "volbak backup rep $i/$REPS"
			timed_volbak vb_backup "volbak-backup-$i" "$SRC_VOL" \
				backup "$SRC_VOL" --to "$WORK/store" -q --log-format json
		else
			rm -rf "$WORK/store-enc"
			log "volbak backup --encrypt-to rep $i/$REPS"
			timed_volbak vb_backup_enc "volbak-backup-enc-$i" "$SRC_VOL" \
				backup "$SRC_VOL" --to "$WORK/store-enc" --encrypt-to "$AGE_RECIPIENT" -q --log-format json
		fi
	done
	if [[ -n $OFFEN ]] && ((i % 2)); then offen_rep "$i" gz zst; fi
done
OSIZE[base_backup]=$(stat -c %s "$WORK/baseline.tar.zst")
OSIZE[vb_backup]=$(manifest_field "$WORK/store" size)
VB_LEVEL=$(manifest_field "$WORK/store" zstd_level)
VB_UNCOMP=$(manifest_field "$WORK/store" uncompressed_size)
VB_FILES=$(manifest_field "$WORK/store" files)
VB_WARNINGS=$(manifest_field "$WORK/store" warnings)
if ((ENCRYPT)); then OSIZE[vb_backup_enc]=$(manifest_field "$WORK/store-enc" size); fi

# volbak backup --level default, once (to its own store; the restore uses ./store).
log "volbak backup --level default (1 rep)"
run_timed "volbak-backup-level-default" /usr/bin/time -f '%e %M' -o "$WORK/time.out" \
	"$VOLBAK" backup "$SRC_VOL" --to "$WORK/store-default" -q --log-format json --level default
BEST[vb_backup_def]=$WALL
RSS[vb_backup_def]=$(rss_kib "$WORK/time.out")
OSIZE[vb_backup_def]=$(manifest_field "$WORK/store-default" size)
log "  ${WALL}s, peak RSS ${RSS[vb_backup_def]} KiB"
rm -rf "$WORK/store-default"

# Before each restore: the last one's 1 GiB goes back to the free pages
# the next one writes into, and both archives are read from cache.
prep_restore() {
	drop_caches
	cat "$WORK/baseline.tar.zst" "$WORK"/store/*/*.tar.zst >/dev/null
	if ((ENCRYPT)); then cat "$WORK"/store-enc/*/*.tar.zst.age >/dev/null; fi
}

# Restores, taking turns too, each into a fresh volume, none removed until
# the end: ext4 makes every file creation scan past inodes deleted in the
# last minutes (recently_deleted), so deleting 27k files just before a
# timed restore would measure the filesystem's bookkeeping, not the restore.
for ((i = 1; i <= REPS; i++)); do
	DST_BASE_VOL=volbakbench-dst-base-$i
	docker volume create "$DST_BASE_VOL" >/dev/null
	prep_restore
	log "baseline restore rep $i/$REPS"
	run_timed "base-restore-$i" bash -c 'set -o pipefail
		zstd -dc "$4" |
			docker run --rm -i --log-driver none --name "$1" -v "$2":/data "$3" /bin/busybox tar -C /data -xf -' \
		_ "volbakbench-untar-$$-$i" "$DST_BASE_VOL" "$BB_IMAGE" "$WORK/baseline.tar.zst"
	log "  ${WALL}s"
	BEST[base_restore]=$(min "${BEST[base_restore]:-}" "$WALL")

	DST_VOL=volbakbench-dst-$i
	DST_ENC_VOL=volbakbench-dst-enc-$i
	for kind in $(rep_kinds "$i"); do
		prep_restore
		if [[ $kind == plain ]]; then
			log "volbak restore rep $i/$REPS"
			timed_volbak vb_restore "volbak-restore-$i" "$DST_VOL" \
				restore "$SRC_VOL" --from "$WORK/store" --to-volume "$DST_VOL" -q
		else
			log "volbak restore --identity rep $i/$REPS"
			timed_volbak vb_restore_enc "volbak-restore-enc-$i" "$DST_ENC_VOL" \
				restore "$SRC_VOL" --from "$WORK/store-enc" --to-volume "$DST_ENC_VOL" --identity "$WORK/bench.key" -q
		fi
	done

	# In place, over the copy just restored: the staged tree beside the old
	# one, the switch, and the old tree's removal.
	prep_restore
	log "volbak restore --force over a previous copy, rep $i/$REPS"
	run_timed "volbak-restore-inplace-$i" /usr/bin/time -f '%e %M' -o "$WORK/time.out" \
		"$VOLBAK" restore "$SRC_VOL" --from "$WORK/store" --to-volume "$DST_VOL" --force -q
	log "  ${WALL}s, peak RSS $(rss_kib "$WORK/time.out") KiB"
	BEST[vb_restore_inplace]=$(min "${BEST[vb_restore_inplace]:-}" "$WALL")
	RSS[vb_restore_inplace]=$(max "${RSS[vb_restore_inplace]:-}" "$(rss_kib "$WORK/time.out")")
done
# Remote storage: the same volume to S3 (versitygw) and SFTP (sshd) on
# loopback, compared with volbak's own local-storage runs above.
REMOTE_FID=""
if ((REMOTE)); then
	log "remote: installing/finding the test servers (scripts/test-deps.sh)"
	"$REPO/scripts/test-deps.sh" >&2 || die "test-deps.sh failed"
	(cd "$REPO" && go build -o "$WORK/serve" ./internal/testsrv/serve) || die "build of the server launcher failed"
	SERVERS_FS="$(df -PT "$WORK" | awk 'NR==2{print $2}') under /var/tmp"
	if ((SERVERS_TMPFS)); then
		mkdir -p "$WORK/servers"
		mount -t tmpfs -o size=8g tmpfs "$WORK/servers" || die "cannot mount a tmpfs for the servers"
		SERVERS_FS=tmpfs
	fi
	"$WORK/serve" -dir "$WORK/servers" -env "$WORK/servers.env" >"$WORK/logs/serve.log" 2>&1 &
	SERVE_PID=$!
	for _ in $(seq 300); do [[ -s $WORK/servers.env ]] && break; kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.1; done
	[[ -s $WORK/servers.env ]] || { cat "$WORK/logs/serve.log" >&2; die "test servers did not start"; }
	set -a; source "$WORK/servers.env"; set +a
	SSH_FLAGS=(--ssh-key "$SFTP_KEY" --known-hosts "$SFTP_KNOWN_HOSTS")
	for ((i = 1; i <= REPS; i++)); do
		# Local, S3 and SFTP back to back in each rep: this VM's speed
		# drifts over minutes, so each remote run is compared with local
		# runs made beside it, not with the ones above.
		for kind in local s3 sftp; do
			url=$S3_URL; extra=()
			[[ $kind == sftp ]] && { url=$SFTP_URL; extra=("${SSH_FLAGS[@]}"); }
			[[ $kind == local ]] && { url=$WORK/store-near; rm -rf "$url"; }
			log "volbak backup to $kind rep $i/$REPS"
			run_timed "volbak-backup-$kind-$i" /usr/bin/time -f '%e %M' -o "$WORK/time.out" \
				"$VOLBAK" backup "$SRC_VOL" --to "$url" "${extra[@]}" -q --log-format json
			log "  ${WALL}s, peak RSS $(rss_kib "$WORK/time.out") KiB"
			BEST[vb_backup_$kind]=$(min "${BEST[vb_backup_$kind]:-}" "$WALL")
			RSS[vb_backup_$kind]=$(max "${RSS[vb_backup_$kind]:-}" "$(rss_kib "$WORK/time.out")")
		done
	done
	for ((i = 1; i <= REPS; i++)); do
		for kind in local s3 sftp; do
			url=$S3_URL; extra=()
			[[ $kind == sftp ]] && { url=$SFTP_URL; extra=("${SSH_FLAGS[@]}"); }
			[[ $kind == local ]] && url=$WORK/store-near
			prep_restore
			# The server reads its copy from page cache too.
			find "$WORK/servers" "$WORK/store-near" -name '*.tar.zst' -exec cat {} + >/dev/null 2>&1 || true
			DST_R=volbakbench-dst-$kind-$i
			log "volbak restore from $kind rep $i/$REPS"
			run_timed "volbak-restore-$kind-$i" /usr/bin/time -f '%e %M' -o "$WORK/time.out" \
				"$VOLBAK" restore "$SRC_VOL" --from "$url" "${extra[@]}" --to-volume "$DST_R" -q
			log "  ${WALL}s, peak RSS $(rss_kib "$WORK/time.out") KiB"
			BEST[vb_restore_$kind]=$(min "${BEST[vb_restore_$kind]:-}" "$WALL")
			RSS[vb_restore_$kind]=$(max "${RSS[vb_restore_$kind]:-}" "$(rss_kib "$WORK/time.out")")
			if ((i == REPS)); then
				line=$("$VOLTREE" diff "$SRC_MP" "$(mountpoint_of "$DST_R")" 2>&1 | tail -n1) || die "fidelity of the $kind restore: $line"
				REMOTE_FID+="$kind: $line; "
			fi
		done
	done
fi

# A destination that goes silent mid-backup (the servers' launcher freezes
# its fault proxy in front of S3 on SIGUSR1): the backup must end within
# the local-only time + the stall bound + 10 s, the local copy written.
if ((REMOTE)); then
	FAULT_AFTER=${FAULT_AFTER:-$(awk -v t="${BEST[vb_backup_s3]}" 'BEGIN{ a = t / 2; if (a > 10) a = 10; printf "%.0f", a }')}
	rm -rf "$WORK/store-fault"
	log "volbak backup to local + S3 going silent after ${FAULT_AFTER}s (stall bound ${STALL_BOUND}s)"
	(sleep "$FAULT_AFTER"; kill -USR1 "$SERVE_PID") &
	faulter=$!
	# Exit 1 (the silent destination failed) is the expected outcome.
	run_timed volbak-backup-fault /usr/bin/time -f '%e %M' -o "$WORK/time.out" \
		bash -c '"$@"; [[ $? == 1 ]]' _ "$VOLBAK" backup "$SRC_VOL" --to "$WORK/store-fault" --to "$S3_PROXY_URL" \
		--stall-timeout "${STALL_BOUND}s" -q --log-format json
	wait "$faulter" || true
	kill -USR2 "$SERVE_PID"
	ls "$WORK/store-fault/$SRC_VOL"/*.json >/dev/null 2>&1 || die "the local copy was not written beside the silent destination"
	BEST[vb_backup_fault]=$WALL
	RSS[vb_backup_fault]=$(rss_kib "$WORK/time.out")
	log "  ${WALL}s"
fi

WORK_FS=$(df -PT "$WORK" | awk 'NR==2{print $2}')
if ((SIDECAR)); then
	sidecar_measure
fi

if [[ -n $OFFEN ]]; then offen_census; fi

# Informational: how faithful is the baseline (busybox tar) restore?
BASE_DIFF_LINE=$("$VOLTREE" diff "$SRC_MP" "$(mountpoint_of "$DST_BASE_VOL")" 2>&1 | tail -n1) || true

# Fidelity of the last volbak restore.
DST_MP=$(mountpoint_of "$DST_VOL")
log "checking fidelity: voltree diff $SRC_MP $DST_MP"
FID_OK=1
"$VOLTREE" diff "$SRC_MP" "$DST_MP" >"$WORK/diff.out" 2>&1 || FID_OK=0
FID_LINE=$(tail -n1 "$WORK/diff.out")
if ((!FID_OK)); then
	log "voltree diff found differences (first 40 lines):"
	head -n 40 "$WORK/diff.out" >&2
fi
ENC_FID=""
if ((ENCRYPT)); then
	ENC_FID=$("$VOLTREE" diff "$SRC_MP" "$(mountpoint_of "$DST_ENC_VOL")" 2>&1 | tail -n1) ||
		die "fidelity of the last encrypted restore: $ENC_FID"
fi
SPARSE_LINE="n/a (no edge/sparse.img in profile $PROFILE)"
SPARSE_NOTE=""
if [[ -f $SRC_MP/edge/sparse.img ]]; then
	s_alloc=$(du -sk "$SRC_MP/edge/sparse.img" | awk '{print $1}')
	d_alloc=$( [[ -f $DST_MP/edge/sparse.img ]] && du -sk "$DST_MP/edge/sparse.img" | awk '{print $1}' || echo missing)
	s_app=$(stat -c %s "$SRC_MP/edge/sparse.img")
	SPARSE_NOTE=" This counts the $((s_app / 1048576)) MiB apparent size of the sparse edge/sparse.img, which busybox tar reads as zeros."
	SPARSE_LINE="source ${s_alloc} KiB allocated, restored ${d_alloc} KiB allocated (apparent size $((s_app / 1024)) KiB)"
fi

# ------------------------------------------------------------------ 8. report

fmt_row() { # LABEL KEY BASEKEY
	local label=$1 k=$2 b=$3 wall rss ratio mbs size
	wall=${BEST[$k]}
	mbs=$(awk -v n="$VOL_BYTES" -v t="$wall" 'BEGIN{ printf "%.1f", n / 1e6 / t }')
	size="–"
	[[ -n ${OSIZE[$k]:-} ]] && size=$(awk -v n="${OSIZE[$k]}" 'BEGIN{ printf "%.1f", n / 1048576 }')
	rss="–"
	[[ -n ${RSS[$k]:-} ]] && rss=$(awk -v n="${RSS[$k]}" 'BEGIN{ printf "%.1f", n / 1024 }')
	ratio=$(awk -v a="$wall" -v b="${BEST[$b]}" 'BEGIN{ printf "%.2fx", a / b }')
	printf '| %s | %.2f | %s | %s | %s | %s |\n' "$label" "$wall" "$mbs" "$size" "$rss" "$ratio"
}

remote_row() { # LABEL KEY LOCALKEY
	local wall=${BEST[$2]}
	printf '| %s | %.2f | %s | %s | %s |\n' "$1" "$wall" \
		"$(awk -v n="$VOL_BYTES" -v t="$wall" 'BEGIN{ printf "%.1f", n / 1e6 / t }')" \
		"$(awk -v n="${RSS[$2]}" 'BEGIN{ printf "%.1f", n / 1024 }')" \
		"$(awk -v a="$wall" -v b="${BEST[$3]}" 'BEGIN{ printf "%.0f%%", b / a * 100 }')"
}

enc_row() { # LABEL KEY PLAINKEY
	local wall=${BEST[$2]} p=${BEST[$3]}
	printf '| %s | %.2f | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$wall" \
		"$(awk -v n="$VOL_BYTES" -v t="$wall" 'BEGIN{ printf "%.1f", n / 1e6 / t }')" \
		"$( [[ -n ${OSIZE[$2]:-} ]] && awk -v n="${OSIZE[$2]}" 'BEGIN{ printf "%.1f", n / 1048576 }' || echo –)" \
		"${CPU[$2]}" "${HCPU[$2]:-–}" \
		"$(awk -v n="${RSS[$2]}" 'BEGIN{ printf "%.1f", n / 1024 }')" \
		"$(awk -v a="$wall" -v b="$p" 'BEGIN{ printf "%.2fx", a / b }')" \
		"$(awk -v a="$wall" -v b="$p" 'BEGIN{ printf "%.0f%%", b / a * 100 }')"
}

# per_rep KEY PLAINKEY [median]: each rep's encrypted / plain wall ratio,
# and their median; with "median", the median alone.
per_rep() {
	awk -v e="${REPWALL[$1]}" -v p="${REPWALL[$2]}" -v only="${3:-}" 'BEGIN{
		n = split(e, E, " "); split(p, P, " ")
		for (i = 1; i <= n; i++) { r[i] = E[i] / P[i]; if (only == "") printf "rep %d %.2f / %.2f s = %.3fx; ", i, E[i], P[i], r[i] }
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
		m = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
		if (only == "") printf "median %.3fx", m; else printf "%.4f", m
	}'
}

# enc_verdict KEY PLAINKEY: the throughput encrypted / plain against the
# target of at most 10% lost, from the best of each and from the median of
# the reps' pairs: on a busy machine one lucky rep decides the first.
enc_verdict() {
	awk -v a="${BEST[$1]}" -v b="${BEST[$2]}" -v m="$(per_rep "$1" "$2" median)" 'BEGIN{
		t = b / a * 100; u = 100 / m
		printf "%.1f%% from the best runs (%s), %.1f%% from the median pair (%s)", t, (t >= 90 ? "met" : "NOT met"), u, (u >= 90 ? "met" : "NOT met")
	}'
}

pct() { awk -v a="$1" -v b="$2" 'BEGIN{ printf "%+.1f%%", (a / b - 1) * 100 }'; }

STAMP=$(date +%Y%m%d-%H%M%S)
RESULT=$OUT_DIR/results-$STAMP.md

{
	echo "## volbak benchmark $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo
	echo "Volume: profile \`$PROFILE\`, size \`$SIZE\` (voltree seed 1): $VOL_BYTES bytes apparent (\`du -sb\`), $VB_FILES tar entries; volbak's manifest says uncompressed_size $VB_UNCOMP."
	echo "volbak $VOLBAK_COMMIT$VOLBAK_DIRTY. Best (min) wall time of $REPS rep(s) per row, except \`--level default\` (1 rep)."
	echo "Caches are dropped before the warm-up and before each restore; then the source tree is read once (voltree hash), and both archives before each restore, so every timed run reads from page cache. Outputs go to $WORK_FS under /var/tmp."
	echo
	echo "| run | wall s | MB/s | output size MiB | peak RSS MiB (volbak, offen) | ratio vs baseline (wall) |"
	echo "|---|---:|---:|---:|---:|---:|"
	fmt_row "baseline backup (busybox tar \| zstd -T0 -3)" base_backup base_backup
	fmt_row "volbak backup (default flags, level $VB_LEVEL)" vb_backup base_backup
	fmt_row "volbak backup --level default" vb_backup_def base_backup
	if [[ -n $OFFEN ]]; then offen_rows; fi
	fmt_row "baseline restore (zstd -dc \| busybox tar -x)" base_restore base_restore
	fmt_row "volbak restore" vb_restore base_restore
	fmt_row "volbak restore --force over a previous copy (in place)" vb_restore_inplace base_restore
	echo
	echo "- MB/s = apparent volume bytes (\`du -sb\` of the source mountpoint, $VOL_BYTES) / 10^6 / wall s.$SPARSE_NOTE"
	echo "- Peak RSS = max over reps of /usr/bin/time %M of the volbak process (helper containers not included), or of the offen process."
	if [[ -n $OFFEN ]]; then offen_notes; fi
	echo "- Output size volbak/baseline: $(pct "${OSIZE[vb_backup]}" "${OSIZE[base_backup]}") (level $VB_LEVEL), $(pct "${OSIZE[vb_backup_def]}" "${OSIZE[base_backup]}") (--level default)."
	echo "- Level default vs $VB_LEVEL: size $(pct "${OSIZE[vb_backup_def]}" "${OSIZE[vb_backup]}"), wall $(pct "${BEST[vb_backup_def]}" "${BEST[vb_backup]}")."
	echo "- In-place restore vs a restore into a fresh volume: $(awk -v a="${BEST[vb_restore_inplace]}" -v b="${BEST[vb_restore]}" 'BEGIN{ printf "%.2fx", a / b }') (target <= 1.3x)."
	echo "- volbak backup warnings (manifest): ${VB_WARNINGS:-0}."
	echo "- Fidelity (voltree diff source vs last volbak restore): $FID_LINE$( ((FID_OK)) || echo ' **FAILED**')"
	echo "- Sparse file edge/sparse.img: $SPARSE_LINE"
	echo "- Baseline restore fidelity (info only; busybox tar is known to drop xattrs, symlink owners and directory mtimes): $BASE_DIFF_LINE"
	echo "- Machine: $(machine)."
	echo
	targets_report
	if ((ENCRYPT)); then
		echo
		echo "Encryption with age (one X25519 recipient, generated for the run): \`volbak backup --encrypt-to\` to and \`volbak restore --identity\` from a local directory, each rep right beside the plain volbak runs of the table above (the same runs: which of the two goes first alternates by rep). Best (min) wall time of $REPS rep(s); the CPU columns are of the best rep."
		echo
		echo "| run | wall s | MB/s | stored MiB | CPU s volbak | CPU s helpers | peak RSS MiB | encrypted / plain (wall) | throughput vs plain |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
		enc_row "volbak backup" vb_backup vb_backup
		enc_row "volbak backup --encrypt-to" vb_backup_enc vb_backup
		enc_row "volbak restore" vb_restore vb_restore
		enc_row "volbak restore --identity" vb_restore_enc vb_restore
		echo
		echo "- Target, age costs at most 10% of throughput: backup $(enc_verdict vb_backup_enc vb_backup); restore $(enc_verdict vb_restore_enc vb_restore)."
		echo "- Per rep, encrypted / plain wall: backup $(per_rep vb_backup_enc vb_backup); restore $(per_rep vb_restore_enc vb_restore)."
		echo "- CPU s volbak: /usr/bin/time user + sys of the volbak process. CPU s helpers: the helper containers' cgroup CPU usage, read every 20 ms until each container is gone (short by at most 20 ms a helper). The daemon's and its shim's CPU moving the attach stream is in neither."
		echo "- Stored size encrypted vs plain: $(awk -v e="${OSIZE[vb_backup_enc]}" -v p="${OSIZE[vb_backup]}" 'BEGIN{ printf "%+d bytes, %+.3f%%", e - p, (e / p - 1) * 100 }') (age adds 16 bytes a 64 KiB chunk, and its header)."
		echo "- Fidelity (voltree diff source vs the last encrypted restore): $ENC_FID"
	fi
	if ((REMOTE)); then
		echo
		echo "Remote storage, same volume, servers on 127.0.0.1 on this machine, their data on $SERVERS_FS (versitygw v1.8.0 posix backend; OpenSSH sshd internal-sftp), default part size (16 MiB, 4 in flight):"
		echo
		echo "Each rep runs local, S3, SFTP back to back; best of $REPS each; throughput relative to the local runs of the same reps."
		echo
		echo "| run | wall s | MB/s | peak RSS MiB | throughput vs volbak local |"
		echo "|---|---:|---:|---:|---:|"
		remote_row "volbak backup to a local directory (same reps)" vb_backup_local vb_backup_local
		remote_row "volbak backup to S3" vb_backup_s3 vb_backup_local
		remote_row "volbak backup to SFTP" vb_backup_sftp vb_backup_local
		remote_row "volbak restore from a local directory (same reps)" vb_restore_local vb_restore_local
		remote_row "volbak restore from S3" vb_restore_s3 vb_restore_local
		remote_row "volbak restore from SFTP" vb_restore_sftp vb_restore_local
		remote_row "volbak backup to a local directory + S3 going silent after ${FAULT_AFTER} s (1 rep)" vb_backup_fault vb_backup_local
		echo
		echo "- Fidelity of the remote restores (voltree diff): ${REMOTE_FID}"
		target=$(awk -v l="${BEST[vb_backup_local]}" -v b="$STALL_BOUND" 'BEGIN{ printf "%.1f", l + b + 10 }')
		verdict=$(awk -v w="${BEST[vb_backup_fault]}" -v t="$target" 'BEGIN{ print (w <= t ? "met" : "NOT met") }')
		echo "- Silent destination: the two-destination backup took ${BEST[vb_backup_fault]} s with a ${STALL_BOUND} s stall bound; target local-only + bound + 10 s = $target s: $verdict. The local copy was written."
	fi
	if ((SIDECAR)); then
		echo
		sidecar_report
	fi
} | tee "$RESULT"

log "saved $RESULT"
((FID_OK)) || die "fidelity check failed: $FID_LINE"
