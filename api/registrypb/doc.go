// Package registrypb is the generated Go code of the Registry gRPC service
// (api/registry/v1/registry.proto, package bulkhead.registry.v1), which the
// controller serves: agents and backup daemons Register when they start and
// then Heartbeat periodically, and Register again when Heartbeat answers
// NOT_FOUND. The registrations are what os-services lists.
//
// Do not edit the *.pb.go files; see package api for how to regenerate them.
package registrypb

// Values of RegisterRequest.Binary and HeartbeatRequest.Binary.
const (
	BinaryAgent   = "bulkhead-agent"
	BinaryBackupd = "bulkhead-backupd"
)
