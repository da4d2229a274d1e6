// Package agent is the node agent behind bulkhead-agent; one runs on every
// storage node.
//
// It owns the node's local volumes and snapshots (through package
// snapshotter), serves the CSI Identity, Controller and Node services
// (package csi) on a unix socket, exports snapshots and volumes over iSCSI
// through the tgt userspace target with per-export CHAP credentials and an
// initiator ACL, and serves a diagnostics HTTP endpoint (/healthz, /readyz,
// /metrics, /debug/...). It never writes controller state: the controller
// tells it what to do over gRPC, and every call it accepts is idempotent,
// keyed by resource id, so the controller can retry it after any crash.
//
// Not implemented yet: the agent is built in a later issue.
package agent
