#!/usr/bin/env bash
# Checks the systemd units in systemd/ for `make lint`, failing loudly:
#   - systemd-analyze verify must accept each unit without a message;
#   - every --flag in an ExecStart must be one the binary knows, and every
#     flag the binary knows must be in its unit's ExecStart, except those
#     whose --help says they default to a $BULKHEAD_ variable (secrets the
#     daemon reads from its environment);
#   - every variable an ExecStart uses must have an Environment= default;
#   - every variable in systemd/<daemon>.env.example must be one the unit
#     uses or the daemon reads (its --help names it).
# The units run /usr/local/bin/bulkhead-*, which need not exist here:
# verify checks copies that run the binaries built into a temporary
# directory instead.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "verify-units: $*" >&2; }

if ! command -v systemd-analyze >/dev/null; then
	say "systemd-analyze not found: install the systemd package (make deps)"
	exit 1
fi
units=(systemd/*.service)
if [[ ! -e ${units[0]} ]]; then
	say "no units in systemd/"
	exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${GO:-go}" build -o "$tmp/bin/" ./cmd/...
mkdir "$tmp/units"
for u in "${units[@]}"; do
	sed "s#/usr/local/bin/#$tmp/bin/#g" "$u" >"$tmp/units/${u##*/}"
done

failed=0
if ! out=$(systemd-analyze verify --man=no --recursive-errors=no "$tmp"/units/*.service 2>&1) || [[ -n $out ]]; then
	say "systemd-analyze verify:"
	echo "${out//$tmp\/units\//systemd/}" | sed 's/^/  /' >&2
	[[ -n $out ]] || say "  (failed without a message)"
	failed=1
fi

for u in "${units[@]}"; do
	# ExecStart= with its continuation lines.
	exec=$(awk '/^ExecStart=/ {on=1} on {print} on && !/\\$/ {on=0}' "$u")
	bin=$(sed -n 's#^ExecStart=/usr/local/bin/\([a-z-]*\).*#\1#p' "$u")
	if [[ -z $bin || ! -x $tmp/bin/$bin ]]; then
		say "$u: ExecStart does not run a bulkhead binary from /usr/local/bin"
		failed=1
		continue
	fi
	help=$("$tmp/bin/$bin" --help 2>&1 || true)
	for flag in $(grep -o -- '--[a-z0-9-]*' <<<"$exec" | sort -u); do
		if ! grep -qE "^  -${flag#--}( |$)" <<<"$help"; then
			say "$u: $bin has no flag $flag"
			failed=1
		fi
	done
	for flag in $(sed -nE 's/^  -([a-z0-9-]+).*/\1/p' <<<"$help"); do
		grep -q -- "--$flag=" <<<"$exec" && continue
		grep -A1 -E "^  -$flag( |\$)" <<<"$help" | tail -n 1 | grep -q '\$BULKHEAD_' && continue
		say "$u: ExecStart does not pass $bin's flag --$flag (add it, with a variable, to the unit, the env example and docs/operations.md)"
		failed=1
	done
	used=$(grep -oE '\$\{?[A-Z_][A-Z0-9_]*' <<<"$exec" | tr -d '${' | sort -u)
	for v in $used; do
		if ! grep -qE "^Environment=$v=" "$u"; then
			say "$u: ExecStart uses \$$v, which has no Environment=$v= default"
			failed=1
		fi
	done
	example=systemd/${bin#bulkhead-}.env.example
	if [[ ! -f $example ]]; then
		say "$u: no $example"
		failed=1
		continue
	fi
	for v in $(sed -nE 's/^#?([A-Z_][A-Z0-9_]*)=.*/\1/p' "$example" | sort -u); do
		if ! grep -qx "$v" <<<"$used" && ! grep -q -- "$v" <<<"$help"; then
			say "$example: $v is neither used by $u nor read by $bin"
			failed=1
		fi
	done
done

if ((failed)); then
	say "FAILED"
	exit 1
fi
echo "verify-units: ${units[*]} OK"
