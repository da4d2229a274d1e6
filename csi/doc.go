// Package csi implements the Container Storage Interface (spec v1) services
// that the node agent serves on a unix socket to kubelet and the CSI
// sidecars: Identity, Controller and Node, as the plugin DriverName.
//
// The Controller service is a client of the controller's REST API
// (api/client): CreateVolume creates a Bulkhead volume (named, and
// idempotent, by the CSI name kept in its metadata) and waits until it is
// available; snapshots likewise; ControllerPublishVolume is an attachment
// whose instance is the node id, completed at once; expansion is os-extend.
// Volumes are node-local: each one's accessible topology is its node,
// under TopologyKey.
//
// The Node service makes a volume's local file (found through VolumePaths)
// usable: stage attaches it to a loop device and, for a mount volume,
// formats it (ext4 or xfs) if empty and mounts it at the staging path;
// publish bind-mounts that (or the loop device, for a block volume) at the
// target path; expand and GrowStaged refresh the loop device and grow the
// filesystem; stats come from statfs. Every external program runs through
// tools.go, and the kernel's mount table and loop devices are the only
// record of what is staged.
//
// Core error kinds (internal/errdefs, client.APIError and the CSI kinds in
// errors.go) become gRPC codes in exactly one place, grpcError, applied to
// every answer by the server's interceptor.
package csi
