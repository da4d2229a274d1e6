# Bulkhead build, test and run entry points. `make test` is what CI runs
# (through .ci/run); it needs root and installs what it needs.

GO      ?= go
# Where `make run` keeps its state (the SQLite database).
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

run: deps build
	STATE="$(STATE)" LISTEN="$(LISTEN)" scripts/run.sh

bench:
	$(GO) test -run '^$$' -bench . ./...

clean:
	rm -rf bin/
