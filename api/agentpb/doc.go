// Package agentpb is the generated Go code of the Agent gRPC service
// (api/agent/v1/agent.proto, package bulkhead.agent.v1): the calls the
// controller makes on the node agent on every storage node to create,
// delete, extend and snapshot volumes and to manage their iSCSI exports.
//
// Every call is idempotent keyed by the resource id the controller chose;
// the .proto file documents each call's errors. The controller uses
// AgentClient; bulkhead-agent implements AgentServer (embedding
// UnimplementedAgentServer). internal/fakeagent is an in-memory AgentServer
// for tests.
//
// Do not edit the *.pb.go files; see package api for how to regenerate them.
package agentpb

// TopologyKeyNode is the topology segment every agent reports in
// NodeInfoResponse.Topology, with the node id as its value. Volumes are
// node-local, so this is also the CSI accessibility key.
const TopologyKeyNode = "topology.bulkhead.io/node"

// TargetIQNPrefix is the prefix of an export's target name; the agent
// names targets TargetIQNPrefix + ":vol-<id>" and ":snap-<id>".
const TargetIQNPrefix = "iqn.2026-11.io.bulkhead"
