#!/usr/bin/env bash
# Installs what Bulkhead's tests and `make run` need on Debian 12. Run as
# root. Idempotent: when every package is already installed it changes
# nothing and does not touch the network.
#
# PostgreSQL: the tests never use the Debian "main" cluster that the
# postgresql package may create and start; internal/testenv runs its own
# throwaway clusters with /usr/lib/postgresql/*/bin/{initdb,pg_ctl}.
#
# Environment:
#   BULKHEAD_CACHE  directory for tools built from source (MinIO, csi-sanity,
#                   ... as later issues need them), default
#                   /var/cache/bulkhead. Built binaries go to
#                   $BULKHEAD_CACHE/bin (use it as GOBIN). Keep it between
#                   runs; anything in it may be deleted at any time.
set -euo pipefail

# systemd: systemd-analyze, which `make lint` runs on the units in systemd/.
packages=(postgresql sqlite3 python3-cinderclient protobuf-compiler iproute2 xfsprogs util-linux mount
	btrfs-progs e2fsprogs tgt libiscsi-bin qemu-utils qemu-block-extra systemd)

# Tools built from the Go module proxy, pinned: name, module@version.
go_tools=(
	"csi-sanity github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@v5.6.0"
	"minio github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"
)

export BULKHEAD_CACHE=${BULKHEAD_CACHE:-/var/cache/bulkhead}

say() { echo "install-deps: $*"; }

installed() {
	[[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

missing=()
for p in "${packages[@]}"; do
	installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
	say "Debian packages already installed: ${packages[*]}"
else
	if ((EUID != 0)); then
		say "missing Debian packages: ${missing[*]}" >&2
		say "run as root (sudo make deps) to install them" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	say "apt-get update"
	apt-get update -qq
	say "apt-get install ${missing[*]}"
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	for p in "${missing[@]}"; do
		installed "$p" || { say "$p is still not installed after apt-get install" >&2; exit 1; }
	done
fi

# internal/testenv starts PostgreSQL from these binaries, as the postgres user.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
	say "no /usr/lib/postgresql/*/bin/initdb although postgresql is installed" >&2
	exit 1
fi
if ! id postgres >/dev/null 2>&1; then
	say "user postgres does not exist although postgresql is installed" >&2
	exit 1
fi

if [[ ! -d $BULKHEAD_CACHE/bin ]]; then
	say "creating tool cache $BULKHEAD_CACHE/bin"
	mkdir -p "$BULKHEAD_CACHE/bin"
fi
say "tool cache for builds from source: $BULKHEAD_CACHE/bin (BULKHEAD_CACHE)"

# tgt's package starts a system tgtd on 0.0.0.0:3260; tests and agents run
# their own tgtd on other ports, so the system one is left as it is.

for t in "${go_tools[@]}"; do
	name=${t%% *} mod=${t#* }
	stamp=$BULKHEAD_CACHE/bin/.$name.version
	if [[ -x $BULKHEAD_CACHE/bin/$name && $(cat "$stamp" 2>/dev/null) == "$mod" ]]; then
		say "$name already built ($mod)"
		continue
	fi
	say "building $name from $mod into $BULKHEAD_CACHE/bin (once)"
	(cd "$BULKHEAD_CACHE" && GOBIN=$BULKHEAD_CACHE/bin GOFLAGS=-mod=mod go install "$mod")
	echo "$mod" >"$stamp"
done
