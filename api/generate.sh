#!/usr/bin/env bash
# Regenerates the Go code of the internal gRPC services from the .proto files
# under api/. The generated code is checked in; CI never runs this.
#
# Generators are pinned and kept in $BULKHEAD_CACHE (default
# /var/cache/bulkhead/bin); missing or wrong versions are installed there.
# protoc comes from Debian's protobuf-compiler package.
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
BIN=${BULKHEAD_CACHE:-/var/cache/bulkhead}/bin
MODULE=github.com/bulkhead-io/bulkhead

cd "$(dirname "$0")/.."

if ! command -v protoc >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		apt-get install -y protobuf-compiler || { apt-get update && apt-get install -y protobuf-compiler; }
	else
		echo "generate.sh: protoc not found; install the protobuf-compiler package" >&2
		exit 1
	fi
fi

mkdir -p "$BIN"
if [ "$("$BIN/protoc-gen-go" --version 2>/dev/null)" != "protoc-gen-go $PROTOC_GEN_GO_VERSION" ]; then
	GOBIN=$BIN go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if [ "$("$BIN/protoc-gen-go-grpc" --version 2>/dev/null)" != "protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION#v}" ]; then
	GOBIN=$BIN go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

# Run from the module root so the files register as api/<service>/v1/*.proto.
protoc \
	--plugin=protoc-gen-go="$BIN/protoc-gen-go" \
	--plugin=protoc-gen-go-grpc="$BIN/protoc-gen-go-grpc" \
	-I . \
	--go_out=. --go_opt=module=$MODULE \
	--go-grpc_out=. --go-grpc_opt=module=$MODULE \
	api/agent/v1/agent.proto \
	api/backup/v1/backup.proto \
	api/registry/v1/registry.proto
