# bench/compare.sh: offen/docker-volume-backup's rows and the targets
# block of bench/bench.sh, which sources it (not run on its own): it uses
# bench.sh's globals and helpers (WORK, OFFEN, SRC_MP, BEST, RSS, OSIZE,
# run_timed, log, die, min, max, fmt_row…).
#
# offen is run as its one-shot command (the "backup" binary with no
# arguments, configured by environment), on the host, reading the source
# volume's mountpoint as its BACKUP_SOURCES. It stages its archive in /tmp
# and locks /var/lock/dockervolumebackup.lock, both fixed paths, and
# talks to Docker if /var/run/docker.sock exists (to stop containers
# labelled for it; the daemon here is shared). So each run gets its own
# mount namespace with the work dir's directories bound over /tmp and
# /run (/var/lock and /var/run point into /run): the staging file and the
# lock land in the work dir, and there is no socket to find.
OFFEN_COMPS=(gz zst)
declare -A OFFEN_COPY OFFEN_TAR

# offen_run COMP REP: one timed offen backup, BACKUP_COMPRESSION=COMP,
# into $WORK/offen/COMP/archive (removed, with the last rep's output,
# before each run of COMP).
offen_run() {
	local comp=$1 i=$2 k=offen_$1 d=$WORK/offen/$1 logf t0 t1
	rm -rf "$d"
	mkdir -p "$d/tmp" "$d/run/lock" "$d/archive"
	log "offen backup (BACKUP_COMPRESSION=$comp) rep $i/$REPS"
	# Everything else at offen's defaults: gz is pgzip level 5 on
	# GZIP_PARALLELISM=1 goroutine, zst klauspost's default level on all
	# cores; no retention (BACKUP_RETENTION_DAYS=-1).
	run_timed "offen-$comp-$i" unshare --mount --propagation private bash -c '
		mount --bind "$1/tmp" /tmp && mount --bind "$1/run" /run || exit 1
		exec /usr/bin/time -f "%e %M" -o "$1/time.out" env -i PATH=/usr/bin:/bin \
			BACKUP_SOURCES="$3" BACKUP_ARCHIVE="$1/archive" BACKUP_COMPRESSION="$4" \
			BACKUP_FILENAME="offen.tar.$4" "$2"' _ "$d" "$OFFEN" "$SRC_MP" "$comp"
	[[ -s $d/archive/offen.tar.$comp ]] || die "offen wrote no $d/archive/offen.tar.$comp (log: $WORK/logs/offen-$comp-$i.log)"
	[[ -z $(ls -A "$d/tmp") ]] || log "WARNING: offen left files in its /tmp: $(ls -A "$d/tmp" | tr '\n' ' ')"
	log "  ${WALL}s, peak RSS $(rss_kib "$d/time.out") KiB, $(stat -c %s "$d/archive/offen.tar.$comp") bytes"
	BEST[$k]=$(min "${BEST[$k]:-}" "$WALL")
	RSS[$k]=$(max "${RSS[$k]:-}" "$(rss_kib "$d/time.out")")
	OSIZE[$k]=$(stat -c %s "$d/archive/offen.tar.$comp")
	# Its copy of the staged file into BACKUP_ARCHIVE, from its own log:
	# "Created backup" to "Stored copy".
	logf=$WORK/logs/offen-$comp-$i.log
	t0=$(sed -n 's/^time=\([^ ]*\) .*Created backup.*/\1/p' "$logf" | head -n1)
	t1=$(sed -n 's/^time=\([^ ]*\) .*Stored copy.*/\1/p' "$logf" | head -n1)
	if [[ -n $t0 && -n $t1 && ${BEST[$k]} == "$WALL" ]]; then
		OFFEN_COPY[$k]=$(awk -v a="$(date -d "$t0" +%s.%N)" -v b="$(date -d "$t1" +%s.%N)" 'BEGIN{ printf "%.2f", b - a }')
	fi
}

# offen_rep REP COMP...: offen's runs of one rep, in that order.
offen_rep() {
	local i=$1 comp
	shift
	for comp in "$@"; do offen_run "$comp" "$i"; done
}

# tar_census FILE: "ENTRIES BYTES HARDLINKS" of the zstd tar FILE (GNU
# tar's listing quotes newlines in names: one line an entry).
tar_census() {
	local bytes
	bytes=$(zstd -dc "$1" | wc -c)
	zstd -dc "$1" | tar -tvf - 2>/dev/null |
		awk -v b="$bytes" '{ n++ } / link to / { h++ } END { printf "%d %.0f %d\n", n, b, h }'
}

# offen_census: what offen's tar holds next to the baseline's, from the
# zst archive of the last rep (untimed, after all the runs).
offen_census() {
	log "counting the entries of offen's and the baseline's tars"
	OFFEN_TAR[offen]=$(tar_census "$WORK/offen/zst/archive/offen.tar.zst")
	OFFEN_TAR[base]=$(tar_census "$WORK/baseline.tar.zst")
}

# offen_version: what the binary says of itself (built from a source tree
# it says "(devel)"), for the report, plus OFFEN_LABEL if given.
offen_version() {
	local deps
	deps=$(go version -m "$OFFEN" 2>/dev/null | awk '$1 == "dep" && $2 ~ /klauspost\/(compress|pgzip)$/ { printf "%s%s %s", sep, $2, $3; sep = ", " }')
	printf '%s, sha256 %s, %s' "${OFFEN_LABEL:-version not given (OFFEN_LABEL)}" \
		"$(sha256sum "$OFFEN" | cut -c1-12)" "${deps:-compressors unknown}"
}

offen_rows() {
	fmt_row "offen backup, BACKUP_COMPRESSION=gz (pgzip level 5)" offen_gz base_backup
	fmt_row "offen backup, BACKUP_COMPRESSION=zst (zstd default level)" offen_zst base_backup
}

offen_notes() {
	local o b
	read -r -a o <<<"${OFFEN_TAR[offen]}"
	read -r -a b <<<"${OFFEN_TAR[base]}"
	echo "- offen: $OFFEN ($(offen_version)), run on the host as \`env -i PATH=/usr/bin:/bin BACKUP_SOURCES=<source mountpoint> BACKUP_ARCHIVE=<work dir> BACKUP_COMPRESSION=gz|zst BACKUP_FILENAME=offen.tar.gz|zst backup\` in a private mount namespace with /tmp and /run bound to work-dir directories (its staging file, its lock, no docker socket). Its wall time includes its staging: the archive is written to /tmp, then copied to BACKUP_ARCHIVE (best rep: ${OFFEN_COPY[offen_gz]:-?} s of the gz run, ${OFFEN_COPY[offen_zst]:-?} s of the zst run, from its log), then the staged file is removed."
	echo "- offen's tar (zst archive): ${o[0]} entries, ${o[1]} bytes uncompressed, ${o[2]} hard-link entries; the baseline's: ${b[0]} entries, ${b[1]} bytes, ${b[2]} hard-link entries; volbak's manifest: ${VB_FILES} entries, ${VB_UNCOMP} bytes. offen names entries by their absolute host path and stores every hard link as a full copy (Go archive/tar FileInfoHeader), skips sockets, keeps no xattrs."
}

# ratio_verdict VALUE OP LIMIT: PASS or MISS.
ratio_verdict() { awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN{ ok = (op == "<=") ? v <= l : v < l; print (ok ? "PASS" : "MISS") }'; }

targets_report() {
	local r ob rss
	echo "Targets (this run; a miss does not fail the benchmark):"
	echo
	echo "| target | measured | goal | verdict |"
	echo "|---|---:|---|---|"
	r=$(awk -v a="${BEST[vb_backup]}" -v b="${BEST[base_backup]}" 'BEGIN{ printf "%.3f", a / b }')
	echo "| volbak backup wall / baseline backup wall | $r | <= 0.55 | $(ratio_verdict "$r" "<=" 0.55) |"
	if [[ -n $OFFEN ]]; then
		ob=offen_gz
		awk -v a="${BEST[offen_zst]}" -v b="${BEST[offen_gz]}" 'BEGIN{ exit !(a < b) }' && ob=offen_zst
		r=$(awk -v a="${BEST[vb_backup]}" -v b="${BEST[$ob]}" 'BEGIN{ printf "%.3f", a / b }')
		echo "| volbak backup wall / offen's best backup wall (${ob#offen_}, ${BEST[$ob]} s) | $r | < 1 | $(ratio_verdict "$r" "<" 1) |"
	else
		echo "| volbak backup wall / offen's best backup wall | n/a (OFFEN not set) | < 1 | – |"
	fi
	r=$(awk -v a="${OSIZE[vb_backup]}" -v b="${OSIZE[base_backup]}" 'BEGIN{ printf "%.4f", a / b }')
	echo "| volbak output size / baseline output size | $r | <= 1.03 | $(ratio_verdict "$r" "<=" 1.03) |"
	r=$(awk -v a="${BEST[vb_restore]}" -v b="${BEST[base_restore]}" 'BEGIN{ printf "%.3f", a / b }')
	echo "| volbak restore wall / baseline restore wall | $r | <= 0.6 | $(ratio_verdict "$r" "<=" 0.6) |"
	rss=$(max "$(max "${RSS[vb_backup]}" "${RSS[vb_restore]}")" "${RSS[vb_restore_inplace]}")
	r=$(awk -v n="$rss" 'BEGIN{ printf "%.1f", n / 1024 }')
	echo "| volbak peak RSS (max of the default backup, restore and in-place restore rows) | $r MiB | <= 64 MiB | $(ratio_verdict "$r" "<=" 64) |"
}
