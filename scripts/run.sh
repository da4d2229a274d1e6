#!/usr/bin/env bash
# Runs the Bulkhead stack on this machine, as far as it exists, in the
# foreground until Ctrl-C. Today that is the controller alone, with its
# state in SQLite. `make run` builds the binaries first.
#
# Environment:
#   STATE   state directory (default ./var); the database is $STATE/state.db
#   LISTEN  address of the REST API (default 127.0.0.1:8776)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STATE=${STATE:-./var}
LISTEN=${LISTEN:-127.0.0.1:8776}

say() { echo "run: $*"; }

controller=bin/bulkhead-controller
if [[ ! -x $controller ]]; then
	say "$controller does not exist; make build builds it from cmd/bulkhead-controller (is that written yet?)" >&2
	exit 1
fi

mkdir -p "$STATE"
# An absolute path gives the unambiguous sqlite:///abs/path form.
STATE=$(cd "$STATE" && pwd)
db="sqlite://$STATE/state.db"

say "$controller db sync --db $db"
"$controller" db sync --db "$db"

say "$controller --listen $LISTEN --db $db --auth noauth"
"$controller" --listen "$LISTEN" --db "$db" --auth noauth &
pid=$!

stop() {
	trap - INT TERM EXIT
	if kill -0 "$pid" 2>/dev/null; then
		say "stopping the controller (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

# Wait until the API accepts connections, or the controller gives up.
host=${LISTEN%:*}
port=${LISTEN##*:}
for ((i = 0; ; i++)); do
	if ! kill -0 "$pid" 2>/dev/null; then
		wait "$pid" && status=0 || status=$?
		say "the controller exited with status $status before it served" >&2
		exit 1
	fi
	if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
		break
	fi
	if ((i == 100)); then
		say "the controller does not accept connections on $LISTEN after 10s" >&2
		exit 1
	fi
	sleep 0.1
done

endpoint="http://$LISTEN/v3/demo"
cat <<EOF

Bulkhead controller (pid $pid) serves the Cinder v3 API at http://$LISTEN/
  state:  $db
  auth:   noauth (the token is USER:PROJECT)

Try:
  curl -s -H 'X-Auth-Token: admin:demo' $endpoint/volumes
  cinder --os-auth-type noauth --os-endpoint $endpoint --os-project-id demo --os-user-id admin create --name first 1

Ctrl-C stops it.
EOF

wait "$pid" && status=0 || status=$?
trap - INT TERM EXIT
say "the controller exited with status $status"
exit "$status"
