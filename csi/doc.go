// Package csi implements the Container Storage Interface services that the
// node agent serves on a unix socket to kubelet and the CSI sidecars.
//
// Identity; Controller: create, delete and expand volumes, snapshots, and
// publish, which becomes an attachment through the controller; Node: stage
// (loop device, filesystem, mount), publish (bind mount), expand and stats.
// Volumes are node-local, with the topology key topology.bulkhead.io/node.
// Core error kinds become gRPC codes in exactly one place in this package.
//
// Not implemented yet: the CSI services are built in a later issue.
package csi
