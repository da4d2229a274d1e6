#!/usr/bin/env bash
# Runs every Bulkhead test: go vet, then go test on all packages. Tests that
# need root or a real component (PostgreSQL, tgtd, XFS, ...) fail when it is
# missing; they never skip. Run `scripts/install-deps.sh` first (`make test`
# does). Extra arguments go to `go test`, e.g. scripts/test.sh -run Store.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Every test must run. internal/testenv's helpers fail rather than skip in
# any case; this tells any other test that might think of skipping that it
# must not.
export BULKHEAD_REQUIRE_ALL=1

if ((EUID != 0)); then
	echo "test: not running as root: tests that need root will fail" >&2
fi

echo "test: go vet ./..."
go vet ./...

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "test: go test -count=1 -timeout 30m -p 2 ${*:+$* }./..."
start=$SECONDS
status=0
go test -count=1 -timeout 30m -p 2 "$@" ./... 2>&1 | tee "$log" || status=$?

ok=$(grep -c '^ok ' "$log" || true)
notests=$(grep -c '^? .*\[no test files\]' "$log" || true)
failed=$(grep -E '^FAIL[[:space:]]+[^[:space:]]+[[:space:]]' "$log" | awk '{print $2}' | sort -u || true)
failedtests=$(grep -E '^[[:space:]]*--- FAIL: ' "$log" | sed -E 's/^[[:space:]]*--- FAIL: ([^ ]+).*/\1/' || true)

echo
echo "test: summary after $((SECONDS - start))s: $ok packages passed, $notests without tests, $(grep -c . <<<"$failed" || true) failed"
if [[ -n $failed ]]; then
	echo "test: failed packages:"
	sed 's/^/  /' <<<"$failed"
fi
if [[ -n $failedtests ]]; then
	echo "test: failed tests:"
	sed 's/^/  /' <<<"$failedtests"
fi
if ((status != 0)); then
	echo "test: FAIL (go test exit status $status)"
	exit "$status"
fi
echo "test: PASS"
