#!/usr/bin/env bash
# Runs the whole Bulkhead stack on this machine and walks through its main
# job with the bulkhead CLI, then keeps the stack serving until Ctrl-C.
# `make run` installs the dependencies and builds the binaries first; this
# script itself needs root, the binaries in $BIN and what
# scripts/install-deps.sh installs (tgt, xfsprogs, the cached MinIO).
#
# The stack, all on loopback and all under one state directory $STATE:
#   MinIO               $STATE/minio       the S3 store of the backups
#   bulkhead-controller $STATE/controller  SQLite database state.db
#   bulkhead-agent      $STATE/agent       node $NODE_ID: its own XFS pool
#                                          image pool.img mounted at pool/,
#                                          its own tgtd, CSI socket
#                                          $STATE/run/csi.sock
#   bulkhead-backupd                       on the agent's node
# Logs go to $STATE/logs/*.log, PID files and sockets to $STATE/run, the
# walk-through's mounts to $STATE/mnt.
#
# The walk-through creates a volume, mounts it here, writes to it, backs it
# up while in use and, while the backup runs, extends it and detaches and
# re-attaches it; then it restores the backup into a new volume and
# compares checksums. Its volumes are named demo-N-… with N counting the
# walk-throughs in $STATE; the previous walk-through's volumes and backup
# are deleted first, so repeated runs reuse the database, the pool and
# MinIO without filling them.
#
# Ctrl-C (SIGINT) or SIGTERM stops everything: the demo volumes are
# unmounted, each daemon gets SIGTERM and is waited for, and the pool is
# unmounted. The state stays for the next run; delete $STATE to start
# afresh.
#
# Environment (addresses are HOST:PORT; every port must be free):
#   STATE            state directory (default ./var)
#   LISTEN           controller: REST API, /metrics, internal gRPC (127.0.0.1:8776)
#   AGENT_LISTEN     agent gRPC (127.0.0.1:8777)
#   AGENT_DIAG       agent diagnostics (127.0.0.1:8778)
#   BACKUPD_LISTEN   backupd gRPC (127.0.0.1:8779)
#   BACKUPD_DIAG     backupd diagnostics (127.0.0.1:8780)
#   MINIO_LISTEN     MinIO S3 API (127.0.0.1:8781)
#   MINIO_CONSOLE    MinIO console, switched off but bound (127.0.0.1:8782)
#   ISCSI_PORTAL     the agent's tgtd portal (127.0.0.1:3261; the system
#                    tgtd keeps 3260)
#   TGT_CONTROL_PORT the agent's tgtd control port, 1..32767 (the portal's port)
#   NODE_ID          the agent's node id (node-1)
#   POOL_SIZE        size of a new pool image (10G; sparse)
#   DEMO_DATA_MIB    MiB of random data the walk-through writes (400)
#   BACKUPD_FLAGS    more flags of bulkhead-backupd, split at spaces
#                    (--parallel 1: one block at a time, so that the
#                    walk-through's backup lasts a few seconds)
#   BIN              directory of the binaries (./bin)
#   BULKHEAD_CACHE   where install-deps.sh built MinIO (/var/cache/bulkhead)
#   RUN_DEMO_ONLY=1  run the walk-through, stop everything and exit: 0 only
#                    when the restored data's checksum matched (for CI)
#
# shellcheck disable=SC2317 # functions called through trap and ready look unreachable to it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STATE=${STATE:-./var}
LISTEN=${LISTEN:-127.0.0.1:8776}
AGENT_LISTEN=${AGENT_LISTEN:-127.0.0.1:8777}
AGENT_DIAG=${AGENT_DIAG:-127.0.0.1:8778}
BACKUPD_LISTEN=${BACKUPD_LISTEN:-127.0.0.1:8779}
BACKUPD_DIAG=${BACKUPD_DIAG:-127.0.0.1:8780}
MINIO_LISTEN=${MINIO_LISTEN:-127.0.0.1:8781}
MINIO_CONSOLE=${MINIO_CONSOLE:-127.0.0.1:8782}
ISCSI_PORTAL=${ISCSI_PORTAL:-127.0.0.1:3261}
TGT_CONTROL_PORT=${TGT_CONTROL_PORT:-${ISCSI_PORTAL##*:}}
NODE_ID=${NODE_ID:-node-1}
POOL_SIZE=${POOL_SIZE:-10G}
DEMO_DATA_MIB=${DEMO_DATA_MIB:-400}
# One block at a time: the demo's backup then lasts long enough to watch.
BACKUPD_FLAGS=${BACKUPD_FLAGS---parallel 1}
BIN=${BIN:-bin}
BULKHEAD_CACHE=${BULKHEAD_CACHE:-/var/cache/bulkhead}
RUN_DEMO_ONLY=${RUN_DEMO_ONLY:-}

# MinIO's credentials: local only, it listens on loopback.
MINIO_USER=bulkhead
MINIO_PASSWORD=bulkhead-local-secret
BUCKET=bulkhead

say() { printf 'run: %s\n' "$*"; }
die() {
	printf 'run: %s\n' "$*" >&2
	exit 1
}

# --- checks before anything starts -----------------------------------------

((EUID == 0)) || die "run as root: the agent makes loop devices and mounts (sudo make run)"

for b in bulkhead-controller bulkhead-agent bulkhead-backupd bulkhead; do
	[[ -x $BIN/$b ]] || die "$BIN/$b does not exist: build the binaries with make build (or set BIN to their directory)"
done
BIN=$(cd "$BIN" && pwd)

for c in ss setsid mountpoint losetup sha256sum mkfs.xfs tgtd tgtadm; do
	command -v "$c" >/dev/null || die "$c is missing: install what Bulkhead needs with make deps (scripts/install-deps.sh)"
done

minio=$BULKHEAD_CACHE/bin/minio
if [[ ! -x $minio ]]; then
	minio=$(command -v minio) ||
		die "the MinIO server is missing: not at $BULKHEAD_CACHE/bin/minio nor on PATH; make deps builds it (scripts/install-deps.sh)"
fi

if ! [[ $TGT_CONTROL_PORT =~ ^[0-9]+$ ]] || ((TGT_CONTROL_PORT < 1 || TGT_CONTROL_PORT > 32767)); then
	die "TGT_CONTROL_PORT=$TGT_CONTROL_PORT: tgtd takes control ports 1..32767"
fi
if ! [[ $DEMO_DATA_MIB =~ ^[1-9][0-9]*$ ]] || ((DEMO_DATA_MIB > 900)); then
	die "DEMO_DATA_MIB=$DEMO_DATA_MIB: want 1..900 (the demo volume has 1 GiB)"
fi

mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
LOGS=$STATE/logs RUN=$STATE/run MNT=$STATE/mnt
mkdir -p "$STATE/controller" "$STATE/agent" "$STATE/minio/data" "$LOGS" "$RUN" "$MNT"

# Daemons of an earlier run that was killed before it could stop them.
stale=()
for f in "$RUN"/*.pid; do
	[[ -e $f ]] || continue
	pid=$(<"$f")
	name=$(basename "$f" .pid)
	if [[ $pid =~ ^[0-9]+$ ]] && grep -qaF -e "bulkhead-$name" -e "$STATE/" "/proc/$pid/cmdline" 2>/dev/null; then
		stale+=("$pid")
		say "$name of an earlier run still runs as pid $pid ($f)" >&2
	else
		rm -f "$f"
	fi
done
((${#stale[@]} == 0)) || die "stop them first (kill ${stale[*]}), or use another STATE"
# What a killed run left mounted is found under $MNT instead.
rm -f "$RUN/demo.pids" "$RUN/mounts"

# ports: NAME=ADDR for each TCP port the stack listens on.
ports=("LISTEN=$LISTEN" "AGENT_LISTEN=$AGENT_LISTEN" "AGENT_DIAG=$AGENT_DIAG" "BACKUPD_LISTEN=$BACKUPD_LISTEN"
	"BACKUPD_DIAG=$BACKUPD_DIAG" "MINIO_LISTEN=$MINIO_LISTEN" "MINIO_CONSOLE=$MINIO_CONSOLE" "ISCSI_PORTAL=$ISCSI_PORTAL")
seen=" "
for p in "${ports[@]}"; do
	var=${p%%=*} addr=${p#*=}
	port=${addr##*:}
	[[ $addr == *:* && $port =~ ^[0-9]+$ ]] || die "$var=$addr: want HOST:PORT, e.g. 127.0.0.1:8776"
	[[ $seen != *" $port "* ]] || die "$var=$addr: port $port is given twice; give each address its own port"
	seen+="$port "
	if [[ -n $(ss -Hltn "sport = :$port") ]]; then
		die "$var=$addr: port $port is in use by another program ($(ss -Hltnp "sport = :$port" | grep -o 'users:.*' | head -1)); free it or set $var to another address"
	fi
done
if tgtadm -C "$TGT_CONTROL_PORT" --mode sys --op show >/dev/null 2>&1; then
	die "TGT_CONTROL_PORT=$TGT_CONTROL_PORT: a tgtd already answers on that control port; set TGT_CONTROL_PORT to another number"
fi

# --- starting and stopping the daemons ---------------------------------------

export BULKHEAD_URL=http://$LISTEN BULKHEAD_TOKEN=admin:demo
csi=unix://$RUN/csi.sock
staging=$RUN/staging
mountflags=(--csi-endpoint "$csi" --staging-dir "$staging")

declare -A pids=() # daemon name → pid
order=()           # daemon names in start order

# start NAME COMMAND...: runs a daemon in its own session (Ctrl-C on the
# terminal reaches this script only, which then stops the daemons in
# order), its output appended to $LOGS/NAME.log.
start() {
	local name=$1
	shift
	say "starting $name (log $LOGS/$name.log): $*"
	printf '\n=== %s run.sh: %s\n' "$(date -Is)" "$*" >>"$LOGS/$name.log"
	setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
	pids[$name]=$!
	order+=("$name")
	echo "$!" >"$RUN/$name.pid"
}

# http_ok ADDR PATH: whether http://ADDR/PATH answers 200 (no curl needed).
http_ok() {
	local line
	(
		exec 3<>"/dev/tcp/${1%:*}/${1##*:}" || exit 1
		printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$1" >&3
		IFS= read -r -t 5 line <&3 || exit 1
		[[ $line == "HTTP/1."?" 200"* ]]
	) 2>/dev/null
}

# ready NAME PROBE...: waits until the command PROBE succeeds, or fails
# with the end of NAME's log when NAME exits or 90 s pass.
ready() {
	local name=$1 i
	shift
	for ((i = 0; i < 900; i++)); do
		"$@" && return 0
		if ! kill -0 "${pids[$name]}" 2>/dev/null; then
			tail -n 30 "$LOGS/$name.log" >&2
			die "$name exited before it was ready (its log, $LOGS/$name.log, ends above)"
		fi
		sleep 0.1
	done
	tail -n 30 "$LOGS/$name.log" >&2
	die "$name is not ready after 90s ($*); its log, $LOGS/$name.log, ends above"
}

# registered BINARY: whether the controller lists BINARY on this node up.
registered() {
	local out
	out=$("$BIN/bulkhead" node list --host "$NODE_ID" --binary "$1" 2>/dev/null) || return 1
	grep -Eq "^$NODE_ID +$1 .* up( |$)" <<<"$out"
}

# The walk-through runs in a background subshell; it and its background
# writer and backup command write their PIDs to $RUN/demo.pids, and the
# walk-through its mounts to $RUN/mounts ("VOLUME DIR"), so that stop finds
# them wherever the walk-through was interrupted.
stopping=
stop() {
	local rc=$? name pid i j gone vol dir m children
	[[ -z $stopping ]] || return 0
	stopping=1
	set +e
	trap 'say "still stopping, one moment"' INT
	echo
	say "stopping everything"
	if [[ -s $RUN/demo.pids ]]; then
		# The walk-through, its background writer and backup command, and
		# the command each of them runs now.
		while read -r pid; do
			mapfile -t children < <(ps -o pid= --ppid "$pid" | awk '{print $1}')
			kill -TERM "$pid" "${children[@]}" 2>/dev/null
		done <"$RUN/demo.pids"
		while read -r pid; do
			for ((i = 0; i < 300; i++)); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
		done <"$RUN/demo.pids"
	fi
	rm -f "$RUN/demo.pids"
	if [[ -s $RUN/mounts ]]; then
		while read -r vol dir; do
			mountpoint -q "$dir" || continue
			say "unmounting $vol: bulkhead volume detach $vol --mount $dir"
			"$BIN/bulkhead" volume detach "$vol" --mount "$dir" "${mountflags[@]}" >/dev/null ||
				say "detaching $vol failed; its mount at $dir is removed below"
		done <"$RUN/mounts"
	fi
	rm -f "$RUN/mounts"
	for ((i = ${#order[@]} - 1; i >= 0; i--)); do
		name=${order[i]} pid=${pids[${order[i]}]}
		if kill -0 "$pid" 2>/dev/null; then
			say "stopping $name (SIGTERM to pid $pid)"
			kill -TERM "$pid"
			gone=
			for ((j = 0; j < 400; j++)); do
				# Gone, or a zombie that wait below reaps.
				if ! kill -0 "$pid" 2>/dev/null || [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then
					gone=1
					break
				fi
				sleep 0.1
			done
			if [[ -z $gone ]]; then
				say "$name did not stop within 40s; killing it (see $LOGS/$name.log)"
				kill -KILL "$pid" 2>/dev/null
			fi
		fi
		wait "$pid" 2>/dev/null
		rm -f "$RUN/$name.pid"
	done
	# The pool image stays; its mount goes (and with it the loop device)
	# so that nothing of the stack outlives it. The next run mounts it again.
	for ((i = 0; i < 50; i++)); do
		mountpoint -q "$STATE/agent/pool" || break
		umount "$STATE/agent/pool" 2>/dev/null || sleep 0.2
	done
	# Anything else still mounted under $STATE, deepest first, and loop
	# devices over files in it: left by a step that failed half-way.
	while read -r m; do
		say "unmounting $m, left over"
		umount "$m" 2>/dev/null || umount -l "$m"
	done < <(awk -v s="$STATE" '$5 == s || index($5, s "/") == 1 {print $5}' /proc/self/mountinfo | tac)
	while read -r dev; do
		[[ -n $dev ]] || continue
		say "detaching loop device $dev, left over"
		losetup -d "$dev"
	done < <(losetup --list --noheadings --output NAME,BACK-FILE | awk -v s="$STATE/" 'index($2, s) == 1 {print $1}')
	say "stopped; the state in $STATE (database, pool image, MinIO data) stays for the next run"
	return "$rc"
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

# The controller's database lived in $STATE/state.db before the stack had
# its own directories.
if [[ -e $STATE/state.db && ! -e $STATE/controller/state.db ]]; then
	say "moving the database of an earlier layout, $STATE/state.db, to $STATE/controller/"
	for f in "$STATE"/state.db "$STATE"/state.db-wal "$STATE"/state.db-shm; do
		[[ ! -e $f ]] || mv "$f" "$STATE/controller/"
	done
fi

# The walk-through counter; a reused state shows in it.
runs=0
[[ ! -s $STATE/demo-runs ]] || runs=$(<"$STATE/demo-runs")
[[ $runs =~ ^[0-9]+$ ]] || runs=0
if ((runs > 0)); then
	say "reusing the state in $STATE from $runs earlier run(s): database, pool image, MinIO data"
else
	say "new state directory $STATE"
fi

start minio env MINIO_ROOT_USER="$MINIO_USER" MINIO_ROOT_PASSWORD="$MINIO_PASSWORD" MINIO_BROWSER=off \
	MINIO_UPDATE=off HOME="$STATE/minio" "$minio" server "$STATE/minio/data" --address "$MINIO_LISTEN" \
	--console-address "$MINIO_CONSOLE" --certs-dir "$STATE/minio/certs" --quiet
ready minio http_ok "$MINIO_LISTEN" /minio/health/ready

db=sqlite://$STATE/controller/state.db
say "$BIN/bulkhead-controller db sync --db $db"
"$BIN/bulkhead-controller" db sync --db "$db" >>"$LOGS/controller.log" 2>&1 ||
	die "db sync of $db failed; see $LOGS/controller.log"
start controller "$BIN/bulkhead-controller" --listen "$LISTEN" --db "$db" --auth noauth
ready controller http_ok "$LISTEN" /healthz

pool_size=$POOL_SIZE
if [[ -f $STATE/agent/pool.img ]]; then
	pool_size=$(stat -c %s "$STATE/agent/pool.img") # an existing pool keeps its size
fi
start agent "$BIN/bulkhead-agent" --controller "http://$LISTEN" --node-id "$NODE_ID" --listen "$AGENT_LISTEN" \
	--state-dir "$STATE/agent" --pool-image "$STATE/agent/pool.img" --pool-size "$pool_size" \
	--pool-dir "$STATE/agent/pool" --csi-endpoint "$csi" --diag-listen "$AGENT_DIAG" \
	--run-tgtd --tgt-control-port "$TGT_CONTROL_PORT" --portal "$ISCSI_PORTAL"
ready agent http_ok "$AGENT_DIAG" /readyz

# The S3 keys go through the environment, out of the process list.
read -ra backupd_flags <<<"$BACKUPD_FLAGS"
start backupd env BULKHEAD_S3_ACCESS_KEY="$MINIO_USER" BULKHEAD_S3_SECRET_KEY="$MINIO_PASSWORD" \
	"$BIN/bulkhead-backupd" --controller "http://$LISTEN" --host "$NODE_ID" --listen "$BACKUPD_LISTEN" \
	--diag-listen "$BACKUPD_DIAG" --s3-endpoint "$MINIO_LISTEN" --s3-bucket "$BUCKET" "${backupd_flags[@]}"
ready backupd http_ok "$BACKUPD_DIAG" /healthz
ready agent registered bulkhead-agent
ready backupd registered bulkhead-backupd
say "the stack is up"

# --- the walk-through ----------------------------------------------------------

step=0
# step SENTENCE: announces the next step.
step() {
	step=$((step + 1))
	printf '\n%d. %s\n' "$step" "$*"
}
# show COMMAND...: prints a command as typed, then runs it.
show() {
	local a
	printf '   $'
	for a in "$@"; do
		if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf ' %s' "$a"; else printf ' %q' "$a"; fi
	done
	printf '\n'
	if [[ $1 == bulkhead ]]; then
		shift
		"$BIN/bulkhead" "$@"
	else
		"$@"
	fi
}
bulkhead() { "$BIN/bulkhead" "$@"; }

# backup_running NAME: whether backup NAME is still being made.
# (No "bulkhead … | grep -q": with pipefail, grep's early exit can fail the
# pipeline when the writer gets SIGPIPE.)
backup_running() {
	local out
	out=$(bulkhead backup show "$1" 2>/dev/null) || return 1
	grep -Eq '^status: +creating$' <<<"$out"
}

# remember_mount VOLUME DIR: stop detaches it.
remember_mount() { echo "$1 $2" >>"$RUN/mounts"; }
forget_mount() { grep -vxF "$1 $2" "$RUN/mounts" >"$RUN/mounts.new" || true; mv "$RUN/mounts.new" "$RUN/mounts"; }

# start_writer FILE: appends a line to FILE every 0.2 s in the background.
# printf is a builtin, so no other process holds the file open, and
# stop_writer leaves nothing that keeps the volume busy.
start_writer() {
	local f=$1
	(while printf '%(%F %T)T\n' -1 >>"$f"; do sleep 0.2; done) &
	writer=$!
	echo "$writer" >>"$RUN/demo.pids"
}
stop_writer() {
	kill "$writer" 2>/dev/null || true
	wait "$writer" 2>/dev/null || true
	forget_pid "$writer"
}
forget_pid() { grep -vxF "$1" "$RUN/demo.pids" >"$RUN/demo.pids.new" || true; mv "$RUN/demo.pids.new" "$RUN/demo.pids"; }

# cleanup_previous: detaches what an earlier walk-through left mounted and
# deletes its volumes and backups (named demo-N-…).
cleanup_previous() {
	local dir vol b names i
	for dir in "$MNT"/*; do
		[[ -d $dir ]] || continue
		if mountpoint -q "$dir"; then
			show bulkhead volume detach "$(basename "$dir")" --mount "$dir" "${mountflags[@]}" ||
				say "could not unmount $dir now; the next run tries again"
		else
			rmdir "$dir" 2>/dev/null || true
		fi
	done
	names=$(bulkhead backup list | awk '$2 ~ /^demo-[0-9]+-/ {print $2}')
	for b in $names; do
		if backup_running "$b"; then
			# Interrupted with the stack: the restarted controller finds
			# backupd lost the job and fails the backup within seconds.
			echo "   backup $b of an interrupted run still shows creating; waiting until the controller ends it"
			for ((i = 0; i < 60; i++)); do
				backup_running "$b" || break
				sleep 1
			done
		fi
		show bulkhead backup delete "$b" --wait || say "could not delete backup $b now; the next run tries again"
	done
	names=$(bulkhead volume list | awk '$2 ~ /^demo-[0-9]+-/ {print $2}')
	for vol in $names; do
		if [[ $(bulkhead volume show "$vol") =~ status:\ +in-use ]]; then
			show bulkhead volume detach "$vol" || true
		fi
		show bulkhead volume delete "$vol" --wait || say "could not delete volume $vol now; the next run tries again"
	done
}

demo() {
	local n=$1 src=demo-$1-src restored=demo-$1-restored backup=demo-$1-backup
	local srcdir=$MNT/demo-$1-src resdir=$MNT/demo-$1-restored
	local bpid backup_step before after status started overlapped=1 progress=$LOGS/demo-$1-backup.progress

	cat <<EOF

Walk-through $n: what Bulkhead is for. Each step says what it does and shows
the command; 'bulkhead' is $BIN/bulkhead with BULKHEAD_URL=$BULKHEAD_URL.
EOF
	if [[ -n $(bulkhead volume list | awk '$2 ~ /^demo-[0-9]+-/') || -n $(ls -A "$MNT") ]]; then
		step "This state directory holds the previous walk-through's volumes and backup. Delete them, so that repeated runs do not fill the pool and MinIO (the database, pool and MinIO themselves are reused)."
		cleanup_previous
	fi

	step "Create a 1 GiB volume, $src, on this node ($NODE_ID)."
	show bulkhead volume create --size 1 --name "$src" --node "$NODE_ID" --wait

	step "Mount it here, through the agent's CSI socket, as Kubernetes would."
	remember_mount "$src" "$srcdir"
	show bulkhead volume attach "$src" --mount "$srcdir" "${mountflags[@]}"

	step "Write $DEMO_DATA_MIB MiB of random data to a file and note its checksum."
	show dd if=/dev/urandom of="$srcdir/data" bs=1M count="$DEMO_DATA_MIB" status=none
	show sync -f "$srcdir/data"
	before=$(sha256sum <"$srcdir/data" | awk '{print $1}')
	echo "   sha256 of data: $before"

	step "Keep writing: a background writer appends a line to writer.log every 0.2 s."
	printf '   $ while date >>%q; do sleep 0.2; done &\n' "$srcdir/writer.log"
	start_writer "$srcdir/writer.log"

	step "Flush what is written so far: a backup sees what is on the disk, as a power cut would."
	show sync -f "$srcdir"

	step "Back the volume up while it is in use (--force: from a temporary snapshot, without detaching it). The command waits in the background, its progress going to $progress."
	backup_step=$step
	started=$SECONDS
	local cmd=("$BIN/bulkhead" backup create "$src" --force --wait --name "$backup")
	printf '   $ bulkhead backup create %q --force --wait --name %q >%q &\n' "$src" "$backup" "$progress"
	if [[ -t 1 ]] && command -v script >/dev/null; then
		# A terminal of its own, so that it draws its progress bar.
		script -qefc "$(printf '%q ' "${cmd[@]}")" /dev/null </dev/null >"$progress" 2>&1 &
	else
		"${cmd[@]}" </dev/null >"$progress" 2>&1 &
	fi
	bpid=$!
	echo "$bpid" >>"$RUN/demo.pids"
	for ((i = 0; i < 300; i++)); do
		bulkhead backup show "$backup" >/dev/null 2>&1 && break
		kill -0 "$bpid" 2>/dev/null || break
		sleep 0.1
	done
	show bulkhead volume list --name "$src"

	# during WHAT: says whether the backup still runs before WHAT.
	during() {
		if backup_running "$backup"; then
			echo "   (the backup is still running: $(bulkhead backup show "$backup" | awk '$1 == "progress:" {print $2}') done)"
		else
			overlapped=
			echo "   (the backup has already finished, after $((SECONDS - started))s: this step no longer overlaps it;"
			echo "    DEMO_DATA_MIB larger than $DEMO_DATA_MIB makes the backup last longer)"
		fi
	}

	step "While the backup runs, extend the volume to 2 GiB: online, the mounted filesystem grows with it."
	during
	show bulkhead volume extend "$src" 2 --wait
	show df -h --output=size,used,target "$srcdir"
	echo "   status and backup_status side by side:"
	show bulkhead volume list --name "$src"

	step "While the backup runs, detach the volume (stop the writer, unmount) and attach it again."
	during
	stop_writer
	show bulkhead volume detach "$src" --mount "$srcdir" "${mountflags[@]}"
	forget_mount "$src" "$srcdir"
	show bulkhead volume list --name "$src"
	remember_mount "$src" "$srcdir"
	show bulkhead volume attach "$src" --mount "$srcdir" "${mountflags[@]}"
	show bulkhead volume list --name "$src"
	echo "   the writer goes on appending to writer.log"
	start_writer "$srcdir/writer.log"

	step "Wait for the backup: the progress of bulkhead backup create --wait, started in step $backup_step."
	if [[ -t 1 ]]; then
		tail -c +1 -f --pid="$bpid" "$progress"
	else
		tail -n +1 -f --pid="$bpid" "$progress" | sed 's/^/   /'
	fi
	status=0
	wait "$bpid" || status=$?
	forget_pid "$bpid"
	if ((status != 0)); then
		echo "   the backup failed (bulkhead backup create exited with status $status):"
		bulkhead backup show "$backup" | sed 's/^/   /'
		return 1
	fi
	if [[ -n $overlapped ]]; then
		echo "   the extend and the detach and re-attach ran while the backup was being made: it took $((SECONDS - started))s"
	fi
	show bulkhead volume list --name "$src"

	step "Restore the backup into a new volume, $restored."
	show bulkhead backup restore "$backup" --name "$restored" --wait

	step "Mount the restored volume and compare its data with what was written before the backup."
	remember_mount "$restored" "$resdir"
	show bulkhead volume attach "$restored" --mount "$resdir" "${mountflags[@]}"
	after=$(sha256sum <"$resdir/data" | awk '{print $1}')
	echo "   sha256 written:  $before"
	echo "   sha256 restored: $after"
	if [[ -f $resdir/writer.log ]]; then
		echo "   writer.log holds $(wc -l <"$resdir/writer.log") line(s) in the restored volume (those on disk at the snapshot), $(wc -l <"$srcdir/writer.log") in the live one by now"
	fi

	stop_writer
	if [[ $before != "$after" ]]; then
		echo "   FAIL: the restored data differs from the data written before the backup"
		return 1
	fi
	echo "   OK: checksums verified, the restored volume holds the data as it was when the backup started"
}

runs=$((runs + 1))
echo "$runs" >"$STATE/demo-runs"
# The walk-through runs in a subshell, so that a failed step ends it but
# not the stack, and in the background, so that a signal reaches stop at
# once; stop ends the subshell (TERM, then its running command).
set +e
(
	set -e
	trap 'exit 143' TERM
	demo "$runs"
) &
demo_pid=$!
echo "$demo_pid" >>"$RUN/demo.pids"
wait "$demo_pid"
demo_status=$?
set -e
forget_pid "$demo_pid"

if [[ -n $RUN_DEMO_ONLY ]]; then
	if ((demo_status != 0)); then
		say "the walk-through failed (status $demo_status); the logs are in $LOGS"
		exit 1
	fi
	say "the walk-through passed: checksums verified"
	exit 0
fi

if ((demo_status != 0)); then
	echo
	say "the walk-through failed (status $demo_status); the stack keeps running so that you can look (logs in $LOGS)"
fi

cat <<EOF

Bulkhead runs until Ctrl-C. State in $STATE, logs in $LOGS.
  REST API (Cinder v3)   http://$LISTEN/v3/demo   token admin:demo (noauth: USER:PROJECT)
  controller metrics     http://$LISTEN/metrics
  agent diagnostics      http://$AGENT_DIAG/debug/volumes   also /metrics /readyz /debug/exports /debug/mounts
  backupd diagnostics    http://$BACKUPD_DIAG/debug/jobs    also /metrics /healthz
  MinIO (S3)             http://$MINIO_LISTEN   bucket $BUCKET, user $MINIO_USER, password $MINIO_PASSWORD
  CSI socket             $csi
EOF
if [[ -s $RUN/mounts ]]; then
	echo "Mounted here (unmounted on Ctrl-C):"
	while read -r vol dir; do echo "  $vol at $dir"; done <"$RUN/mounts"
fi
cat <<EOF

Try:
  export BULKHEAD_URL=$BULKHEAD_URL
  $BIN/bulkhead volume list
  $BIN/bulkhead backup list
  $BIN/bulkhead node list
  $BIN/bulkhead backup create demo-$runs-src --force --incremental --wait
  curl -s -H 'X-Auth-Token: admin:demo' http://$LISTEN/v3/demo/volumes
  cinder --os-auth-type noauth --os-endpoint http://$LISTEN/v3/demo --os-project-id demo --os-user-id admin list

Ctrl-C stops everything.
EOF

status=0
wait -n "${pids[@]}" || status=$?
for name in "${order[@]}"; do
	kill -0 "${pids[$name]}" 2>/dev/null || say "$name exited unexpectedly (status $status); see $LOGS/$name.log"
done
exit 1
