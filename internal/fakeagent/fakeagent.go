// Package fakeagent is an in-memory node agent for controller tests.
//
// Agent implements agentpb.AgentServer with volumes, snapshots and exports
// kept in maps, following the contract documented in
// api/agent/v1/agent.proto: every call is idempotent keyed by resource id,
// and errors are the gRPC status codes the contract names (NOT_FOUND,
// INVALID_ARGUMENT, ALREADY_EXISTS, RESOURCE_EXHAUSTED,
// FAILED_PRECONDITION). No data is stored; paths and connection
// information are made up but stable.
//
// Capacity is counted as the sum of the volumes' provisioned sizes;
// snapshots share their volume's space (as reflink and thin snapshots do)
// and take none.
//
// For tests of failures and transitional states an Agent can fail the next
// calls of a method (FailNext), hold calls until the test releases them
// (Block), and count calls (Calls). Start serves an Agent over real gRPC on
// a loopback port for the life of a test:
//
//	ag, addr := fakeagent.Start(t, "node-1", 100<<30)
//	// point the controller at addr ...
//	release := ag.Block("CreateVolume")
//	// ... start a create; wait until ag.Held("CreateVolume") == 1;
//	// check the volume is "creating"; then:
//	release()
package fakeagent

import (
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/agentpb"
)

// Method names accepted by FailNext, Block, Held and Calls. The full gRPC
// names (agentpb.Agent_CreateVolume_FullMethodName, ...) are accepted too.
const (
	MethodCreateVolume         = "CreateVolume"
	MethodDeleteVolume         = "DeleteVolume"
	MethodExtendVolume         = "ExtendVolume"
	MethodCreateSnapshot       = "CreateSnapshot"
	MethodDeleteSnapshot       = "DeleteSnapshot"
	MethodCreateExport         = "CreateExport"
	MethodInitializeConnection = "InitializeConnection"
	MethodTerminateConnection  = "TerminateConnection"
	MethodRemoveExport         = "RemoveExport"
	MethodNodeInfo             = "NodeInfo"
)

var methods = []string{
	MethodCreateVolume, MethodDeleteVolume, MethodExtendVolume,
	MethodCreateSnapshot, MethodDeleteSnapshot, MethodCreateExport,
	MethodInitializeConnection, MethodTerminateConnection, MethodRemoveExport,
	MethodNodeInfo,
}

// DefaultPortal is the portal reported by an Agent made with New until
// SetPortal changes it. Start uses the gRPC listen address instead.
const DefaultPortal = "127.0.0.1:3260"

// LUN is the logical unit reported in every ConnectionInfo (tgt's LUN 0 is
// the target controller, so data is on LUN 1).
const LUN = 1

type volume struct {
	id             string
	size           int64
	sourceSnapshot string
	sourceVolume   string
}

type snapshot struct {
	id       string
	volumeID string
	size     int64
	hidden   bool
}

type exportKey struct {
	id   string
	kind agentpb.ResourceKind
}

type export struct {
	chapUser   string
	chapSecret string
	initiators map[string]bool
}

// gate holds the calls of one method while it is blocked.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// Agent is an in-memory agentpb.AgentServer. Its methods are safe for
// concurrent use. Make one with New or Start.
type Agent struct {
	agentpb.UnimplementedAgentServer

	mu                 sync.Mutex
	nodeID             string
	capacity           int64
	canExportSnapshots bool
	portal             string
	topology           map[string]string
	volumes            map[string]*volume
	snapshots          map[string]*snapshot
	exports            map[exportKey]*export
	calls              map[string]int
	held               map[string]int
	failNext           map[string][]error
	gates              map[string]*gate
}

var _ agentpb.AgentServer = (*Agent)(nil)

// New returns an Agent for node nodeID with capacity bytes of space that can
// export snapshots, reporting DefaultPortal.
func New(nodeID string, capacity int64) *Agent {
	return &Agent{
		nodeID:             nodeID,
		capacity:           capacity,
		canExportSnapshots: true,
		portal:             DefaultPortal,
		topology:           map[string]string{agentpb.TopologyKeyNode: nodeID},
		volumes:            map[string]*volume{},
		snapshots:          map[string]*snapshot{},
		exports:            map[exportKey]*export{},
		calls:              map[string]int{},
		held:               map[string]int{},
		failNext:           map[string][]error{},
		gates:              map[string]*gate{},
	}
}

// Start serves a new Agent (see New) over gRPC on a free port of 127.0.0.1
// and returns it with its address (host:port), which is also the portal it
// reports. The server stops, and blocked calls are released, when the test
// ends.
func Start(t testing.TB, nodeID string, capacity int64) (*Agent, string) {
	t.Helper()
	a := New(nodeID, capacity)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakeagent: listen: %v", err)
	}
	addr := lis.Addr().String()
	a.SetPortal(addr)
	srv := grpc.NewServer()
	agentpb.RegisterAgentServer(srv, a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		a.releaseAll()
		srv.Stop()
		<-done
	})
	return a, addr
}

// Dial returns a client of the agent at addr (plaintext gRPC), closed when
// the test ends.
func Dial(t testing.TB, addr string) agentpb.AgentClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("fakeagent: dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return agentpb.NewAgentClient(conn)
}

// ---- configuration and inspection ----

// NodeID returns the node id the agent reports.
func (a *Agent) NodeID() string { return a.nodeID }

// SetCapacity changes the node's capacity. Existing volumes are kept even if
// they no longer fit; free space is then reported as 0.
func (a *Agent) SetCapacity(bytes int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.capacity = bytes
}

// SetCanExportSnapshots sets NodeInfo's can_export_snapshots. When false,
// CreateExport of a snapshot fails with FAILED_PRECONDITION.
func (a *Agent) SetCanExportSnapshots(ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.canExportSnapshots = ok
}

// SetPortal sets the portal returned in ConnectionInfo.
func (a *Agent) SetPortal(portal string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.portal = portal
}

// SetTopology sets a topology segment reported by NodeInfo, in addition to
// agentpb.TopologyKeyNode (which cannot be changed).
func (a *Agent) SetTopology(key, value string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if key == agentpb.TopologyKeyNode {
		panic("fakeagent: SetTopology cannot change " + agentpb.TopologyKeyNode)
	}
	a.topology[key] = value
}

// Volume returns the volume with id, if it exists.
func (a *Agent) Volume(id string) (*agentpb.Volume, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.volumes[id]
	if !ok {
		return nil, false
	}
	return a.volumePB(v), true
}

// Volumes returns all volumes, sorted by id.
func (a *Agent) Volumes() []*agentpb.Volume {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*agentpb.Volume, 0, len(a.volumes))
	for _, id := range slices.Sorted(maps.Keys(a.volumes)) {
		out = append(out, a.volumePB(a.volumes[id]))
	}
	return out
}

// Snapshot returns the snapshot with id, if it exists.
func (a *Agent) Snapshot(id string) (*agentpb.Snapshot, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.snapshots[id]
	if !ok {
		return nil, false
	}
	return a.snapshotPB(s), true
}

// Snapshots returns all snapshots (hidden ones included), sorted by id.
func (a *Agent) Snapshots() []*agentpb.Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*agentpb.Snapshot, 0, len(a.snapshots))
	for _, id := range slices.Sorted(maps.Keys(a.snapshots)) {
		out = append(out, a.snapshotPB(a.snapshots[id]))
	}
	return out
}

// Export is a recorded export, as returned by Exports.
type Export struct {
	ResourceID string
	Kind       agentpb.ResourceKind
	TargetIQN  string
	ChapUser   string
	ChapSecret string
	// Initiators allowed by InitializeConnection, sorted.
	Initiators []string
}

// Exports returns the current exports, sorted by kind and then id.
func (a *Agent) Exports() []Export {
	a.mu.Lock()
	defer a.mu.Unlock()
	keys := slices.SortedFunc(maps.Keys(a.exports), func(x, y exportKey) int {
		if x.kind != y.kind {
			return int(x.kind) - int(y.kind)
		}
		return strings.Compare(x.id, y.id)
	})
	out := make([]Export, 0, len(keys))
	for _, k := range keys {
		e := a.exports[k]
		out = append(out, Export{
			ResourceID: k.id,
			Kind:       k.kind,
			TargetIQN:  TargetIQN(k.id),
			ChapUser:   e.chapUser,
			ChapSecret: e.chapSecret,
			Initiators: slices.Sorted(maps.Keys(e.initiators)),
		})
	}
	return out
}

// UsedBytes returns the space taken by volumes.
func (a *Agent) UsedBytes() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.used()
}

// TargetIQN returns the target name of the export of resource id.
func TargetIQN(id string) string { return agentpb.TargetIQNPrefix + ":" + id }

// VolumePath and SnapshotPath return the paths the fake reports.
func VolumePath(nodeID, id string) string   { return "/fake/" + nodeID + "/volumes/" + id }
func SnapshotPath(nodeID, id string) string { return "/fake/" + nodeID + "/snapshots/" + id }

// ---- fault injection ----

func methodName(m string) string {
	if i := strings.LastIndexByte(m, '/'); i >= 0 {
		m = m[i+1:]
	}
	if !slices.Contains(methods, m) {
		panic(fmt.Sprintf("fakeagent: unknown Agent method %q", m))
	}
	return m
}

// FailNext makes the next call of method return err instead of doing
// anything. Calls queue: FailNext twice fails the next two calls. Use a
// status error (status.Error(codes.Unavailable, "...")) to choose the gRPC
// code; any other error reaches a gRPC client as UNKNOWN. The failing call
// still counts in Calls and is still held by Block. An unknown method name
// panics.
func (a *Agent) FailNext(method string, err error) {
	m := methodName(method)
	if err == nil {
		panic("fakeagent: FailNext with a nil error")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failNext[m] = append(a.failNext[m], err)
}

// Block holds every call of method that arrives from now on, before it does
// anything, until release is called (or the call's context ends, which
// fails it with the context's status). release is idempotent. While a
// method is blocked, calling Block again returns a release for the same
// block. An unknown method name panics.
func (a *Agent) Block(method string) (release func()) {
	m := methodName(method)
	a.mu.Lock()
	defer a.mu.Unlock()
	g, ok := a.gates[m]
	if !ok {
		g = &gate{ch: make(chan struct{})}
		a.gates[m] = g
	}
	return func() {
		a.mu.Lock()
		if a.gates[m] == g {
			delete(a.gates, m)
		}
		a.mu.Unlock()
		g.open()
	}
}

// Held returns how many calls of method are being held by Block right now.
func (a *Agent) Held(method string) int {
	m := methodName(method)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held[m]
}

// Calls returns how many calls of method the agent has received, including
// failed, held and invalid ones.
func (a *Agent) Calls(method string) int {
	m := methodName(method)
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[m]
}

func (a *Agent) releaseAll() {
	a.mu.Lock()
	gates := a.gates
	a.gates = map[string]*gate{}
	a.mu.Unlock()
	for _, g := range gates {
		g.open()
	}
}

// enter does the bookkeeping every call starts with: count it, take an
// injected failure, wait while the method is blocked.
func (a *Agent) enter(ctx context.Context, m string) error {
	a.mu.Lock()
	a.calls[m]++
	var injected error
	if q := a.failNext[m]; len(q) > 0 {
		injected = q[0]
		a.failNext[m] = q[1:]
	}
	g := a.gates[m]
	if g != nil {
		a.held[m]++
	}
	a.mu.Unlock()
	if g != nil {
		var err error
		select {
		case <-g.ch:
		case <-ctx.Done():
			err = status.FromContextError(ctx.Err()).Err()
		}
		a.mu.Lock()
		a.held[m]--
		a.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return injected
}

// ---- validation helpers (call with a.mu held where state is used) ----

func validID(what, id string) error {
	if id == "" {
		return status.Errorf(codes.InvalidArgument, "%s is empty", what)
	}
	if len(id) > 128 {
		return status.Errorf(codes.InvalidArgument, "%s %q is longer than 128 characters", what, id)
	}
	for i, c := range id {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return status.Errorf(codes.InvalidArgument, "%s %q: must match [A-Za-z0-9][A-Za-z0-9._-]*", what, id)
		}
	}
	return nil
}

func validKind(k agentpb.ResourceKind) error {
	if k != agentpb.ResourceKind_RESOURCE_KIND_VOLUME && k != agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT {
		return status.Errorf(codes.InvalidArgument, "kind %v: must be RESOURCE_KIND_VOLUME or RESOURCE_KIND_SNAPSHOT", k)
	}
	return nil
}

func validInitiator(iqn string) error {
	if !strings.HasPrefix(iqn, "iqn.") && !strings.HasPrefix(iqn, "eui.") && !strings.HasPrefix(iqn, "naa.") {
		return status.Errorf(codes.InvalidArgument, "initiator_iqn %q is not an iSCSI name (iqn., eui. or naa.)", iqn)
	}
	return nil
}

func (a *Agent) used() int64 {
	var n int64
	for _, v := range a.volumes {
		n += v.size
	}
	return n
}

func (a *Agent) free() int64 { return max(a.capacity-a.used(), 0) }

func (a *Agent) needSpace(what string, bytes int64) error {
	if free := a.free(); bytes > free {
		return status.Errorf(codes.ResourceExhausted, "%s needs %d bytes, node %s has %d free", what, bytes, a.nodeID, free)
	}
	return nil
}

func (a *Agent) volumePB(v *volume) *agentpb.Volume {
	return &agentpb.Volume{VolumeId: v.id, SizeBytes: v.size, Path: VolumePath(a.nodeID, v.id)}
}

func (a *Agent) snapshotPB(s *snapshot) *agentpb.Snapshot {
	return &agentpb.Snapshot{
		SnapshotId: s.id, VolumeId: s.volumeID, SizeBytes: s.size,
		Path: SnapshotPath(a.nodeID, s.id), Hidden: s.hidden,
	}
}

// resourcePath returns the path of an existing resource, or NOT_FOUND.
func (a *Agent) resourcePath(id string, kind agentpb.ResourceKind) (string, error) {
	if kind == agentpb.ResourceKind_RESOURCE_KIND_VOLUME {
		if _, ok := a.volumes[id]; !ok {
			return "", status.Errorf(codes.NotFound, "volume %s not found on node %s", id, a.nodeID)
		}
		return VolumePath(a.nodeID, id), nil
	}
	if _, ok := a.snapshots[id]; !ok {
		return "", status.Errorf(codes.NotFound, "snapshot %s not found on node %s", id, a.nodeID)
	}
	return SnapshotPath(a.nodeID, id), nil
}

func kindName(k agentpb.ResourceKind) string {
	if k == agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT {
		return "snapshot"
	}
	return "volume"
}

// ---- agentpb.AgentServer ----

// CreateVolume implements agentpb.AgentServer.
func (a *Agent) CreateVolume(ctx context.Context, req *agentpb.CreateVolumeRequest) (*agentpb.Volume, error) {
	if err := a.enter(ctx, MethodCreateVolume); err != nil {
		return nil, err
	}
	id := req.GetVolumeId()
	if err := validID("volume_id", id); err != nil {
		return nil, err
	}
	size := req.GetSizeBytes()
	if size <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "size_bytes %d: must be > 0", size)
	}
	srcSnap, srcVol := req.GetSourceSnapshotId(), req.GetSourceVolumeId()
	if srcSnap != "" && srcVol != "" {
		return nil, status.Error(codes.InvalidArgument, "at most one of source_snapshot_id and source_volume_id may be set")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if v, ok := a.volumes[id]; ok {
		if v.size != size || v.sourceSnapshot != srcSnap || v.sourceVolume != srcVol {
			return nil, status.Errorf(codes.AlreadyExists,
				"volume %s exists with size %d (source snapshot %q, volume %q); requested size %d (source snapshot %q, volume %q)",
				id, v.size, v.sourceSnapshot, v.sourceVolume, size, srcSnap, srcVol)
		}
		return a.volumePB(v), nil
	}
	var srcSize int64
	switch {
	case srcSnap != "":
		s, ok := a.snapshots[srcSnap]
		if !ok {
			return nil, status.Errorf(codes.NotFound, "source snapshot %s not found on node %s", srcSnap, a.nodeID)
		}
		srcSize = s.size
	case srcVol != "":
		v, ok := a.volumes[srcVol]
		if !ok {
			return nil, status.Errorf(codes.NotFound, "source volume %s not found on node %s", srcVol, a.nodeID)
		}
		srcSize = v.size
	}
	if size < srcSize {
		return nil, status.Errorf(codes.InvalidArgument, "size_bytes %d is smaller than the source's %d", size, srcSize)
	}
	if err := a.needSpace("volume "+id, size); err != nil {
		return nil, err
	}
	v := &volume{id: id, size: size, sourceSnapshot: srcSnap, sourceVolume: srcVol}
	a.volumes[id] = v
	return a.volumePB(v), nil
}

// DeleteVolume implements agentpb.AgentServer.
func (a *Agent) DeleteVolume(ctx context.Context, req *agentpb.DeleteVolumeRequest) (*agentpb.DeleteVolumeResponse, error) {
	if err := a.enter(ctx, MethodDeleteVolume); err != nil {
		return nil, err
	}
	id := req.GetVolumeId()
	if err := validID("volume_id", id); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.volumes[id]; !ok {
		return &agentpb.DeleteVolumeResponse{}, nil
	}
	var snaps []string
	for _, s := range a.snapshots {
		if s.volumeID == id {
			snaps = append(snaps, s.id)
		}
	}
	if len(snaps) > 0 {
		slices.Sort(snaps)
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s has snapshots: %s", id, strings.Join(snaps, ", "))
	}
	if _, ok := a.exports[exportKey{id, agentpb.ResourceKind_RESOURCE_KIND_VOLUME}]; ok {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is exported", id)
	}
	delete(a.volumes, id)
	return &agentpb.DeleteVolumeResponse{}, nil
}

// ExtendVolume implements agentpb.AgentServer.
func (a *Agent) ExtendVolume(ctx context.Context, req *agentpb.ExtendVolumeRequest) (*agentpb.Volume, error) {
	if err := a.enter(ctx, MethodExtendVolume); err != nil {
		return nil, err
	}
	id := req.GetVolumeId()
	if err := validID("volume_id", id); err != nil {
		return nil, err
	}
	size := req.GetNewSizeBytes()
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.volumes[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s not found on node %s", id, a.nodeID)
	}
	if size < v.size {
		return nil, status.Errorf(codes.InvalidArgument, "new_size_bytes %d is smaller than volume %s's size %d: volumes cannot shrink", size, id, v.size)
	}
	if size > v.size {
		if err := a.needSpace("extending volume "+id, size-v.size); err != nil {
			return nil, err
		}
		v.size = size
	}
	return a.volumePB(v), nil
}

// CreateSnapshot implements agentpb.AgentServer.
func (a *Agent) CreateSnapshot(ctx context.Context, req *agentpb.CreateSnapshotRequest) (*agentpb.Snapshot, error) {
	if err := a.enter(ctx, MethodCreateSnapshot); err != nil {
		return nil, err
	}
	id, volID := req.GetSnapshotId(), req.GetVolumeId()
	if err := validID("snapshot_id", id); err != nil {
		return nil, err
	}
	if err := validID("volume_id", volID); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.snapshots[id]; ok {
		if s.volumeID != volID || s.hidden != req.GetHidden() {
			return nil, status.Errorf(codes.AlreadyExists,
				"snapshot %s exists of volume %s (hidden %t); requested of volume %s (hidden %t)",
				id, s.volumeID, s.hidden, volID, req.GetHidden())
		}
		return a.snapshotPB(s), nil
	}
	v, ok := a.volumes[volID]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s not found on node %s", volID, a.nodeID)
	}
	s := &snapshot{id: id, volumeID: volID, size: v.size, hidden: req.GetHidden()}
	a.snapshots[id] = s
	return a.snapshotPB(s), nil
}

// DeleteSnapshot implements agentpb.AgentServer.
func (a *Agent) DeleteSnapshot(ctx context.Context, req *agentpb.DeleteSnapshotRequest) (*agentpb.DeleteSnapshotResponse, error) {
	if err := a.enter(ctx, MethodDeleteSnapshot); err != nil {
		return nil, err
	}
	id := req.GetSnapshotId()
	if err := validID("snapshot_id", id); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.exports[exportKey{id, agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT}]; ok {
		return nil, status.Errorf(codes.FailedPrecondition, "snapshot %s is exported", id)
	}
	delete(a.snapshots, id)
	return &agentpb.DeleteSnapshotResponse{}, nil
}

// CreateExport implements agentpb.AgentServer.
func (a *Agent) CreateExport(ctx context.Context, req *agentpb.CreateExportRequest) (*agentpb.CreateExportResponse, error) {
	if err := a.enter(ctx, MethodCreateExport); err != nil {
		return nil, err
	}
	id, kind := req.GetResourceId(), req.GetKind()
	if err := validKind(kind); err != nil {
		return nil, err
	}
	if err := validID("resource_id", id); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	key := exportKey{id, kind}
	if _, ok := a.exports[key]; ok {
		return &agentpb.CreateExportResponse{}, nil
	}
	if kind == agentpb.ResourceKind_RESOURCE_KIND_SNAPSHOT && !a.canExportSnapshots {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s cannot export snapshots", a.nodeID)
	}
	if _, err := a.resourcePath(id, kind); err != nil {
		return nil, err
	}
	a.exports[key] = &export{
		chapUser:   "bulkhead-" + id,
		chapSecret: rand.Text()[:16],
		initiators: map[string]bool{},
	}
	return &agentpb.CreateExportResponse{}, nil
}

// InitializeConnection implements agentpb.AgentServer.
func (a *Agent) InitializeConnection(ctx context.Context, req *agentpb.InitializeConnectionRequest) (*agentpb.ConnectionInfo, error) {
	if err := a.enter(ctx, MethodInitializeConnection); err != nil {
		return nil, err
	}
	id, kind, iqn := req.GetResourceId(), req.GetKind(), req.GetInitiatorIqn()
	if err := validKind(kind); err != nil {
		return nil, err
	}
	if err := validID("resource_id", id); err != nil {
		return nil, err
	}
	if err := validInitiator(iqn); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	path, err := a.resourcePath(id, kind)
	if err != nil {
		return nil, err
	}
	e, ok := a.exports[exportKey{id, kind}]
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "%s %s is not exported: call CreateExport first", kindName(kind), id)
	}
	e.initiators[iqn] = true
	return &agentpb.ConnectionInfo{
		Portal:     a.portal,
		TargetIqn:  TargetIQN(id),
		Lun:        LUN,
		ChapUser:   e.chapUser,
		ChapSecret: e.chapSecret,
		LocalPath:  path,
	}, nil
}

// TerminateConnection implements agentpb.AgentServer.
func (a *Agent) TerminateConnection(ctx context.Context, req *agentpb.TerminateConnectionRequest) (*agentpb.TerminateConnectionResponse, error) {
	if err := a.enter(ctx, MethodTerminateConnection); err != nil {
		return nil, err
	}
	id, kind, iqn := req.GetResourceId(), req.GetKind(), req.GetInitiatorIqn()
	if err := validKind(kind); err != nil {
		return nil, err
	}
	if err := validID("resource_id", id); err != nil {
		return nil, err
	}
	if err := validInitiator(iqn); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.exports[exportKey{id, kind}]; ok {
		delete(e.initiators, iqn)
	}
	return &agentpb.TerminateConnectionResponse{}, nil
}

// RemoveExport implements agentpb.AgentServer.
func (a *Agent) RemoveExport(ctx context.Context, req *agentpb.RemoveExportRequest) (*agentpb.RemoveExportResponse, error) {
	if err := a.enter(ctx, MethodRemoveExport); err != nil {
		return nil, err
	}
	id, kind := req.GetResourceId(), req.GetKind()
	if err := validKind(kind); err != nil {
		return nil, err
	}
	if err := validID("resource_id", id); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.exports, exportKey{id, kind})
	return &agentpb.RemoveExportResponse{}, nil
}

// NodeInfo implements agentpb.AgentServer.
func (a *Agent) NodeInfo(ctx context.Context, _ *agentpb.NodeInfoRequest) (*agentpb.NodeInfoResponse, error) {
	if err := a.enter(ctx, MethodNodeInfo); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return &agentpb.NodeInfoResponse{
		NodeId:             a.nodeID,
		CapacityBytes:      a.capacity,
		FreeBytes:          a.free(),
		Topology:           maps.Clone(a.topology),
		CanExportSnapshots: a.canExportSnapshots,
	}, nil
}
