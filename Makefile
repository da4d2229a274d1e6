# Bulkhead build, test and run entry points. `make test` is what CI runs
# (through .ci/run); it needs root and installs what it needs.

GO      ?= go
# Where `make run` keeps its state (database, pool image, MinIO data, logs).
STATE   ?= ./var
# Address of the controller's REST API under `make run`.
LISTEN  ?= 127.0.0.1:8776
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo 0.1.0-dev)
LDFLAGS := -X github.com/bulkhead-io/bulkhead/internal/version.Version=$(VERSION)

.PHONY: all build deps test lint run bench clean

all: build

# bin/bulkhead-controller, bin/bulkhead-agent, bin/bulkhead-backupd, bin/bulkhead
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

deps:
	scripts/install-deps.sh

test: deps
	scripts/test.sh

# gofmt's file list skips what the Go tool skips too: hidden dirs, testdata,
# vendor, and the bin and var outputs.
# verify-units.sh checks systemd/ with systemd-analyze verify.
lint:
	$(GO) vet ./...
	@files=$$(find . -type d \( -name '.?*' -o -name testdata -o -name vendor -o -path ./bin -o -path ./var \) -prune \
		-o -type f -name '*.go' -print); \
	unformatted=$$(gofmt -l $$files); \
	if [ -n "$$unformatted" ]; then \
		echo "lint: these files are not gofmt-formatted (run gofmt -w on them):"; \
		echo "$$unformatted" | sed 's/^/  /'; \
		exit 1; \
	fi
	GO="$(GO)" scripts/verify-units.sh

# The whole stack (controller on SQLite, agent with its own XFS pool image,
# backupd, MinIO) under $(STATE), then a walk-through with the bulkhead CLI;
# serves until Ctrl-C. scripts/run.sh lists the other ports and settings
# (environment variables); RUN_DEMO_ONLY=1 runs the walk-through and exits.
run: deps build
	STATE="$(STATE)" LISTEN="$(LISTEN)" scripts/run.sh

# Benchmarks against real parts (MinIO, tgtd, iscsi-perf), so they need
# deps. Each reports its rate and the ratio to a raw baseline measured in the
# same run. BULKHEAD_BENCH_SIZE sizes the backup/restore volumes (default 4GiB).
# -p 1: one package at a time, so benchmarks do not compete for the CPUs.
bench: deps
	$(GO) test -p 1 -run '^$$' -bench . -timeout 60m ./...

clean:
	rm -rf bin/
