// Package api holds the contracts between Bulkhead's daemons.
//
// Internal gRPC services, one directory per service and version with the
// .proto source, and one Go package per service with the generated code:
//
//	agent/v1/agent.proto        -> agentpb     controller -> bulkhead-agent
//	backup/v1/backup.proto      -> backuppb    controller -> bulkhead-backupd
//	registry/v1/registry.proto  -> registrypb  agent, backupd -> controller
//
// The generated *.pb.go and *_grpc.pb.go files are checked in and never
// edited by hand; after changing a .proto file run `go generate ./api`
// (which runs generate.sh with pinned generator versions) and commit the
// result. CI never runs protoc. Hand-written files next to generated ones
// (doc.go, constants) are kept to a minimum.
//
// The semantics of every call (idempotency, error codes) are documented in
// the .proto files; the generated Go packages repeat them in their
// comments. internal/fakeagent is an in-memory Agent for controller tests
// that follows the same contract.
package api

//go:generate bash generate.sh
