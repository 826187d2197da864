# bench/sidecar.sh: the scheduler sidecar's section of bench/bench.sh,
# which sources it (not run on its own): it uses bench.sh's globals and
# helpers (WORK, VOLBAK, VOLTREE, REPS, run_timed, log, die, min, max…).
#
# volbak run, the scheduler sidecar, run here as a host process (not the
# image's container): (a) idle between runs, its schedule months away,
# without and with a /metrics scraper; (b) one job backing up
# SIDECAR_VOLUMES small labelled volumes (run --once) vs as many volbak
# backup calls one after another, while a poller and docker events check
# that no two helpers ever serve one volume; (c) idle again after a
# scheduled run of those volumes. Defined here, run after the other
# measurements (or alone, with ONLY_SIDECAR=1).
SC_RUN=$$-$(date +%s)
SC_LABEL=volbakbench.sidecar=$SC_RUN   # the 50 volumes: a label no one else has
SC_IDLE_LABEL=volbakbench.idle=$SC_RUN # the idle daemon's one volume
SC_IDLE_VOL=volbakbench-sc-idle
SC_NEVER="0 0 1 1 *"                   # the idle daemon's schedule: next 1 January
SC_SETTLE=5
SC_SCRAPE_EVERY=15
SC_VOLS=()
declare -A SC

# CPU time (utime + stime, clock ticks, all threads) of PID.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# Context switches of all of PID's threads, voluntary and not.
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/{n += $2} END{print n + 0}'; }

# A TCP port nothing listens on, for --listen.
free_port() {
	local p
	for _ in $(seq 50); do
		p=$((20000 + RANDOM % 40000))
		ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
	die "no free TCP port found"
}

# sidecar_idle NAME WINDOW [ADDR [AFTER_RUN]]: volbak run (a host process),
# --listen ADDR if ADDR is not empty. Without AFTER_RUN it selects
# $SC_IDLE_VOL with a schedule months away; with AFTER_RUN=1 it selects the
# SC_VOLS, its schedule fires once a few seconds after its start, and
# sampling waits for that run's end. After SC_SETTLE s, VmRSS is sampled
# every second for WINDOW s, /metrics scraped every SC_SCRAPE_EVERY s if
# it listens (as Prometheus would). Sets SC[NAME_*]: rss (max VmRSS, KiB),
# rss0 and rss1 (first and last sample), cpu (s used in the window), ctx
# (context switches in it), threads (max), samples, scrapes, window (s).
sidecar_idle() {
	local name=$1 window=$2 addr=${3:-} after=${4:-0} pid i c0 c1 x0 x1 t0 t1 d rss maxrss=0 rss0="" thr maxthr=0 n=0 scrapes=0 rc=0
	local args=() sched=$SC_NEVER label=$SC_IDLE_LABEL store=$WORK/sc-idle-store logf=$WORK/logs/sidecar-idle-$name.log
	[[ -n $addr ]] && args=(--listen "$addr")
	if ((after)); then
		# Seconds first (six fields), in UTC like date -u.
		sched="CRON_TZ=UTC $(date -u -d "+$((SC_SETTLE + 5)) seconds" '+%-S %-M %-H') * * *"
		label=$SC_LABEL store=$WORK/sc-post-store
		log "sidecar: volbak run ($name), schedule \"$sched\": waiting for its run of ${#SC_VOLS[@]} volumes, then settle ${SC_SETTLE}s and ${window}s of samples"
	else
		log "sidecar: idle volbak run ($name), settle ${SC_SETTLE}s, then ${window}s of samples"
	fi
	env VOLBAK_SCHEDULE="$sched" VOLBAK_TO="$store" VOLBAK_VOLUME_LABEL="$label" \
		setsid "$VOLBAK" run --state-dir "$WORK/sc-state-idle-$name" --log-format json "${args[@]}" \
		>"$logf" 2>&1 </dev/null &
	CHILD=$!
	pid=$CHILD
	if ((after)); then
		for ((i = 0; ; i++)); do
			grep -q '"msg":"run done"' "$logf" && break
			if grep -q '"msg":"run failed"' "$logf" || ! kill -0 "$pid" 2>/dev/null || ((i > 36000)); then
				cat "$logf" >&2
				die "volbak run ($name): its run did not succeed"
			fi
			sleep 0.1
		done
		SC[${name}_run]=$(sed -n 's/.*"msg":"run done".*"seconds":\([0-9.]*\).*/\1/p' "$logf" | head -n1 | awk '{ printf "%.1f", $1 }')
		sc_check_store "$store"
	fi
	sleep "$SC_SETTLE"
	if ! kill -0 "$pid" 2>/dev/null || [[ $(cat "/proc/$pid/comm" 2>/dev/null) != volbak ]]; then
		cat "$logf" >&2
		die "volbak run ($name) is not running after ${SC_SETTLE}s (pid $pid)"
	fi
	c0=$(cpu_ticks "$pid"); x0=$(ctx_switches "$pid"); t0=${EPOCHREALTIME/./}
	for ((i = 0; i <= window; i++)); do
		# On the second from t0, whatever the loop itself takes.
		d=$((t0 + i * 1000000 - ${EPOCHREALTIME/./}))
		((d > 0)) && sleep "$((d / 1000000)).$(printf '%06d' $((d % 1000000)))"
		if [[ -n $addr ]] && ((i < window && i % SC_SCRAPE_EVERY == 0)); then
			curl -sf --max-time 5 "http://$addr/metrics" >"$WORK/sc-metrics.txt" ||
				die "scrape of http://$addr/metrics failed"
			grep -q '^volbak_runs_total' "$WORK/sc-metrics.txt" || die "no volbak_runs_total in /metrics"
			scrapes=$((scrapes + 1))
		fi
		rss=$(awk '/^VmRSS:/{print $2}' "/proc/$pid/status")
		thr=$(awk '/^Threads:/{print $2}' "/proc/$pid/status")
		[[ -n $rss0 ]] || rss0=$rss
		maxrss=$(max "$maxrss" "$rss"); maxthr=$(max "$maxthr" "$thr")
		n=$((n + 1))
	done
	c1=$(cpu_ticks "$pid"); x1=$(ctx_switches "$pid"); t1=${EPOCHREALTIME/./}
	kill -TERM "$pid"
	wait "$pid" || rc=$?
	CHILD=""
	((rc == 0)) || log "WARNING: volbak run ($name) exited $rc on SIGTERM"
	SC[${name}_rss]=$maxrss
	SC[${name}_rss0]=$rss0
	SC[${name}_rss1]=$rss
	SC[${name}_threads]=$maxthr
	SC[${name}_cpu]=$(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN{ printf "%.2f", (b - a) / hz }')
	SC[${name}_ctx]=$((x1 - x0))
	SC[${name}_samples]=$n
	SC[${name}_scrapes]=$scrapes
	SC[${name}_window]=$(awk -v a="$t0" -v b="$t1" 'BEGIN{ printf "%.1f", (b - a) / 1e6 }')
	log "  max RSS ${maxrss} KiB (first sample ${rss0}, last ${rss} KiB), CPU ${SC[${name}_cpu]} s, ${SC[${name}_ctx]} context switches in ${SC[${name}_window]} s"
}

# poll_start FILE: every 100 ms (plus docker ps's own time), one line per
# poll into FILE: "ID=VOLUME" of each running volbak helper, space-separated;
# and, exact where the polls sample, the helpers' start and die events
# into FILE.events ("NANOS ACTION ID VOLUME").
poll_start() {
	setsid bash -c 'docker events --filter type=container --filter label=io.volbak.helper \
			--format "{{.TimeNano}} {{.Action}} {{.Actor.ID}} {{index .Actor.Attributes \"io.volbak.volume\"}}" >"$1.events" &
		while :; do
			docker ps --filter label=io.volbak.helper --format "{{.ID}}={{.Label \"io.volbak.volume\"}}" 2>/dev/null | tr "\n" " "
			echo
			sleep 0.1
		done' _ "$1" >"$1" 2>/dev/null </dev/null &
	POLL_PID=$!
	sleep 0.5 # docker events is listening
}
poll_stop() {
	kill -TERM -- "-$POLL_PID" 2>/dev/null
	wait "$POLL_PID" 2>/dev/null || true
	POLL_PID=""
}
# poll_summary FILE: "MAX DUPS POLLS HELPERS VOLUMES" over this bench's
# volumes (volbakbench-sc-*): the most helpers seen at once, the volumes
# seen with two helpers at once (comma-separated, or -), the polls, the
# distinct helpers and the distinct volumes seen.
poll_summary() {
	awk '{
		n = 0; delete seen
		for (f = 1; f <= NF; f++) {
			split($f, p, "="); id = p[1]; v = p[2]
			if (v !~ /^volbakbench-sc-/) continue
			n++; ids[id] = 1; vols[v] = 1
			if (v in seen) dup[v] = 1
			seen[v] = 1
		}
		if (n > mx) mx = n
		polls++
	} END {
		d = ""; for (v in dup) d = d (d == "" ? "" : ",") v
		ni = 0; for (i in ids) ni++
		nv = 0; for (v in vols) nv++
		print mx + 0, (d == "" ? "-" : d), polls + 0, ni, nv
	}' "$1"
}

# events_summary FILE.events: "MAX DUPS STARTS" from the helpers' start and
# die events for this bench's volumes: the most running at once, the
# volumes that had two at once (or -), the helpers started.
events_summary() {
	awk '$4 ~ /^volbakbench-sc-/ && ($2 == "start" || $2 == "die") {
		if ($2 == "start") {
			if (run[$3]) next
			run[$3] = 1; n++; on[$4]++; starts++
			if (on[$4] > 1) dup[$4] = 1
			if (n > mx) mx = n
		} else if (run[$3]) {
			run[$3] = 0; n--; on[$4]--
		}
	} END {
		d = ""; for (v in dup) d = d (d == "" ? "" : ",") v
		print mx + 0, (d == "" ? "-" : d), starts + 0
	}' "$1"
}

# sc_check_store DIR: one snapshot (manifest) per volume of SC_VOLS.
sc_check_store() {
	local v n
	for v in "${SC_VOLS[@]}"; do
		n=$(ls "$1/$v"/*.json 2>/dev/null | wc -l)
		((n == 1)) || die "sidecar: $n snapshots of $v in $1, want 1"
	done
}

sidecar_measure() {
	local i mp0 mp v name sum best
	docker volume create --label "$SC_IDLE_LABEL" "$SC_IDLE_VOL" >/dev/null
	echo idle >"$(mountpoint_of "$SC_IDLE_VOL")/idle.txt"
	sidecar_idle plain "$SIDECAR_IDLE"
	SC[metrics_addr]=127.0.0.1:$(free_port)
	sidecar_idle metrics "$SIDECAR_IDLE" "${SC[metrics_addr]}"
	vol_rm "$SC_IDLE_VOL"

	log "sidecar: $SIDECAR_VOLUMES volumes labelled $SC_LABEL, $SIDECAR_VOL_SIZE each (voltree small, generated once, copied)"
	for ((i = 1; i <= SIDECAR_VOLUMES; i++)); do
		v=$(printf 'volbakbench-sc-%02d' "$i")
		docker volume create --label "$SC_LABEL" "$v" >/dev/null
		SC_VOLS+=("$v")
		mp=$(mountpoint_of "$v")
		if ((i == 1)); then
			mp0=$mp
			"$VOLTREE" gen -profile small -size "$SIDECAR_VOL_SIZE" -seed 1 "$mp0" 2> >(sed 's/^/[voltree] /' >&2)
		else
			cp -a "$mp0/." "$mp/"
		fi
	done
	sync
	SC[vol_bytes]=$(du -sb "$mp0" | awk '{print $1}')
	SC[vol_entries]=$(find "$mp0" | wc -l)
	log "  each: ${SC[vol_bytes]} bytes apparent, ${SC[vol_entries]} entries"
	log "sidecar: warm-up backup of ${SC_VOLS[0]} (untimed)"
	run_timed sidecar-warmup "$VOLBAK" backup "${SC_VOLS[0]}" --to "$WORK/sc-warm" -q --log-format json
	rm -rf "$WORK/sc-warm"

	# Taking turns, like the other rows; the poller runs during both, so
	# that both pay for it alike.
	for ((i = 1; i <= REPS; i++)); do
		for name in once seq; do
			rm -rf "$WORK/sc-store" "$WORK/sc-state-once"
			poll_start "$WORK/sc-poll-$name-$i.txt"
			if [[ $name == once ]]; then
				log "sidecar: volbak run --once, one job, ${#SC_VOLS[@]} volumes, rep $i/$REPS"
				run_timed "sidecar-once-$i" /usr/bin/time -f '%e %M %U %S' -o "$WORK/time.out" \
					env VOLBAK_SCHEDULE="$SC_NEVER" VOLBAK_TO="$WORK/sc-store" VOLBAK_VOLUME_LABEL="$SC_LABEL" \
					"$VOLBAK" run --once --state-dir "$WORK/sc-state-once" -q --log-format json
			else
				log "sidecar: ${#SC_VOLS[@]} x volbak backup, one after another, rep $i/$REPS"
				run_timed "sidecar-seq-$i" /usr/bin/time -f '%e %M %U %S' -o "$WORK/time.out" \
					bash -c 'vb=$1 to=$2; shift 2; for v; do "$vb" backup "$v" --to "$to" -q --log-format json || exit; done' \
					_ "$VOLBAK" "$WORK/sc-store" "${SC_VOLS[@]}"
			fi
			poll_stop
			sc_check_store "$WORK/sc-store"
			read -r "SC[${name}_emax_$i]" "SC[${name}_edups_$i]" "SC[${name}_estarts_$i]" \
				< <(events_summary "$WORK/sc-poll-$name-$i.txt.events")
			((${SC[${name}_estarts_$i]} >= ${#SC_VOLS[@]})) ||
				log "WARNING: docker events saw ${SC[${name}_estarts_$i]} helpers start, want ${#SC_VOLS[@]} at least"
			read -r "SC[${name}_max_$i]" "SC[${name}_dups_$i]" "SC[${name}_polls_$i]" "SC[${name}_helpers_$i]" "SC[${name}_pvols_$i]" \
				< <(poll_summary "$WORK/sc-poll-$name-$i.txt")
			SC[${name}_pollrate_$i]=$(awk -v w="$WALL" -v n="${SC[${name}_polls_$i]}" 'BEGIN{ printf "%.0f", n ? w * 1000 / n : 0 }')
			log "  ${WALL}s, peak RSS $(rss_kib "$WORK/time.out") KiB; helpers: max ${SC[${name}_max_$i]} at once, two on one volume: ${SC[${name}_dups_$i]} (${SC[${name}_polls_$i]} polls, ${SC[${name}_helpers_$i]} helpers on ${SC[${name}_pvols_$i]} volumes seen); events: max ${SC[${name}_emax_$i]}, two on one volume: ${SC[${name}_edups_$i]}, ${SC[${name}_estarts_$i]} started"
			SC[${name}_wall_$i]=$WALL
			best=${SC[${name}_wall]:-}
			SC[${name}_wall]=$(min "$best" "$WALL")
			if [[ ${SC[${name}_wall]} == "$WALL" ]]; then
				SC[${name}_cpu]=$(awk '{ printf "%.2f", $3 + $4 }' "$WORK/time.out")
			fi
			SC[${name}_rss]=$(max "${SC[${name}_rss]:-}" "$(rss_kib "$WORK/time.out")")
			SC[${name}_max]=$(max "${SC[${name}_max]:-}" "${SC[${name}_max_$i]}")
			SC[${name}_emax]=$(max "${SC[${name}_emax]:-}" "${SC[${name}_emax_$i]}")
			[[ ${SC[${name}_dups_$i]} == - ]] || SC[${name}_dups]+="rep $i: ${SC[${name}_dups_$i]} "
			[[ ${SC[${name}_edups_$i]} == - ]] || SC[${name}_edups]+="rep $i: ${SC[${name}_edups_$i]} "
			SC[${name}_estarts]=$(( ${SC[${name}_estarts]:-0} + ${SC[${name}_estarts_$i]} ))
			SC[${name}_polls]=$(( ${SC[${name}_polls]:-0} + ${SC[${name}_polls_$i]} ))
		done
	done
	rm -rf "$WORK/sc-store"

	# The daemon idle again after a scheduled run of the same volumes: what
	# the run left behind, and whether Go gives it back (it forces a GC
	# every 2 minutes, then its scavenger returns pages).
	SC[post_addr]=127.0.0.1:$(free_port)
	sidecar_idle post "$SIDECAR_POST_IDLE" "${SC[post_addr]}" 1
	rm -rf "$WORK/sc-post-store"
	for v in "${SC_VOLS[@]}"; do vol_rm "$v"; done
}

sidecar_report() {
	local mib='{ printf "%.1f", $1 / 1024 }' n=${#SC_VOLS[@]} k verdict label
	echo "Scheduler sidecar: \`volbak run\` as a host process started by this script (not the image's container), its state dir under $WORK."
	echo
	echo "Idle daemon: after ${SC_SETTLE} s to settle, VmRSS (/proc/PID/status) sampled every second, and its CPU time (utime + stime of all threads, /proc/PID/stat) and context switches (all threads) over the window. Rows 1 and 2: \`VOLBAK_SCHEDULE=\"$SC_NEVER\"\`, one labelled volume selected, nothing run yet. Row 3: a schedule that fired once, ${SC_SETTLE}+5 s after the start, backing up the $n volumes below (${SC[post_run]} s); sampled from ${SC_SETTLE} s after that run's end."
	echo
	echo "| daemon | window s | samples | max RSS MiB | first / last sample RSS MiB | CPU s in window | context switches | threads | target: RSS <= 25 MiB, CPU ~0 |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
	for k in plain metrics post; do
		case $k in
		plain) label="idle, no listener" ;;
		metrics) label="idle, --listen, /metrics scraped every ${SC_SCRAPE_EVERY} s (${SC[metrics_scrapes]} in the window)" ;;
		post) label="idle after one scheduled run of the $n volumes, --listen, /metrics every ${SC_SCRAPE_EVERY} s (${SC[post_scrapes]} in the window)" ;;
		esac
		verdict=$(awk -v r="${SC[${k}_rss]}" -v c="${SC[${k}_cpu]}" -v w="${SC[${k}_window]}" 'BEGIN{ print (r <= 25 * 1024 ? "RSS met" : "RSS NOT met") ", CPU " (c / w * 60 < 0.05 ? "~0" : "NOT ~0") }')
		printf '| %s | %s | %s | %s | %s / %s | %s | %s | %s | %s |\n' "$label" \
			"${SC[${k}_window]}" "${SC[${k}_samples]}" "$(echo "${SC[${k}_rss]}" | awk "$mib")" \
			"$(echo "${SC[${k}_rss0]}" | awk "$mib")" "$(echo "${SC[${k}_rss1]}" | awk "$mib")" \
			"${SC[${k}_cpu]}" "${SC[${k}_ctx]}" "${SC[${k}_threads]}" "$verdict"
	done
	echo
	echo "- CPU is counted in clock ticks of $((1000 / $(getconf CLK_TCK))) ms: 0.00 means less than one tick in the window; \"~0\" means under 0.05 s a minute."
	echo
	echo "$n volumes labelled \`${SC_LABEL%%=*}=…\`, each $SIDECAR_VOL_SIZE of voltree \`small\` (${SC[vol_bytes]} bytes apparent, ${SC[vol_entries]} entries; the same tree in each), to a local directory ($WORK_FS under /var/tmp). Best (min) wall time of $REPS rep(s), the two taking turns; no keep policy (no pruning)."
	echo
	echo "| run | wall s | s per volume | CPU s of volbak (user + sys) | peak RSS MiB | max helpers at once (polls / events) | ratio vs sequential (wall) |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	for k in seq once; do
		printf '| %s | %.2f | %.3f | %s | %s | %s / %s | %s |\n' \
			"$( [[ $k == seq ]] && echo "$n x \`volbak backup VOL --to DIR\`, one after another" || echo "\`volbak run --once\`, one job selecting the $n volumes by label")" \
			"${SC[${k}_wall]}" "$(awk -v w="${SC[${k}_wall]}" -v n="$n" 'BEGIN{ print w / n }')" "${SC[${k}_cpu]}" \
			"$(echo "${SC[${k}_rss]}" | awk "$mib")" "${SC[${k}_max]}" "${SC[${k}_emax]}" \
			"$(awk -v a="${SC[${k}_wall]}" -v b="${SC[seq_wall]}" 'BEGIN{ printf "%.2fx", a / b }')"
	done
	echo
	echo "- Per rep, sidecar / sequential wall: $(for ((k = 1; k <= REPS; k++)); do awk -v a="${SC[once_wall_$k]}" -v b="${SC[seq_wall_$k]}" -v k="$k" 'BEGIN{ printf "rep %d %.1f / %.1f s = %.2fx; ", k, a, b, a / b }'; done)"
	echo "- CPU s: /usr/bin/time of the volbak process(es) of the best rep (the $n calls summed); the helper containers' CPU is not included. Peak RSS: the largest volbak process, max over reps."
	echo "- Helpers on one volume, watched during every rep of both runs (so both pay for it): \`docker ps --filter label=io.volbak.helper\` every 100 ms plus its own time (sidecar: $(for ((k = 1; k <= REPS; k++)); do printf '%s polls, one per %s ms, saw %s helpers on %s volumes; ' "${SC[once_polls_$k]}" "${SC[once_pollrate_$k]}" "${SC[once_helpers_$k]}" "${SC[once_pvols_$k]}"; done)), and \`docker events\` (start/die of every helper, exact). Two helpers on one volume at once: sidecar ${SC[once_dups]:-never} (polls), ${SC[once_edups]:-never} (events, ${SC[once_estarts]} helpers started); sequential ${SC[seq_dups]:-never} (polls), ${SC[seq_edups]:-never} (events, ${SC[seq_estarts]} started)."
	echo "- Each run's store held one snapshot of each of the $n volumes afterwards (checked, the scheduled run's too)."
}
