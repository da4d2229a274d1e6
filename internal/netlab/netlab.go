// Package netlab builds small lab networks of Linux network namespaces for
// multi-node tests, so that daemons of different "nodes" run on one machine
// yet talk to each other over a real (virtual) network.
//
// A lab is a hub namespace holding a Linux bridge, and one namespace per
// node joined to that bridge by a veth pair. Each node has loopback and
// eth0 up, with address 10.X.Y.N/24 in a /24 picked at random per lab. The
// namespaces are named bkh-<lab id>-<node> (the hub's bkh-<lab id>-hub) and
// bind-mounted under /run/netns, so `ip netns exec` and
// `nsenter --net=/run/netns/NAME` reach them too.
//
// Nothing is ever added to the test's own (root) namespace: no address, no
// link, no route. The test process reaches a node through sockets created
// inside the node's namespace (DialContext, HTTPClient, Listen), and starts
// programs in it with Command. Only the network namespace differs: mounts,
// loop devices and the file system are shared with the host, so unix
// sockets work across nodes.
//
// Close deletes the namespaces, and with them their links and addresses.
// A namespace that a running process still uses lives on, unnamed, until
// that process ends: stop a lab's processes before closing it.
//
// Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetNSDir is where named network namespaces are bind-mounted (the
// directory iproute2 uses).
const NetNSDir = "/run/netns"

// Prefix starts the name of every namespace a lab makes.
const Prefix = "bkh-"

// Names inside the namespaces: the hub's bridge and each node's interface.
const (
	bridgeName = "br0"
	nodeIface  = "eth0"
	hubPrefix  = "ve-" // hub end of a node's veth: ve-<node>
)

// nodeName limits node names so that ve-<node> fits an interface name
// (15 characters).
var nodeName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,11}$`)

// Lab is one lab network. Its methods are safe for concurrent use.
type Lab struct {
	id      string
	subnet  [3]byte // 10.X.Y
	nsenter string
	nodes   map[string]*labNode
	names   []string // nodes in the order given to New

	mu         sync.Mutex
	closed     bool
	transports []*http.Transport
}

type labNode struct {
	ns string // namespace name
	ip net.IP
}

// New creates a lab with the given nodes (1 to 200 of them, names of 1 to
// 12 characters from a-z, 0-9 and '-'). The first node gets address .1 of
// the lab's /24, the second .2, and so on. On error nothing is left behind.
func New(names ...string) (*Lab, error) {
	if len(names) == 0 || len(names) > 200 {
		return nil, fmt.Errorf("netlab: a lab needs 1 to 200 nodes, got %d", len(names))
	}
	nsenter, err := findNsenter()
	if err != nil {
		return nil, err
	}
	var id [3]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("netlab: lab id: %w", err)
	}
	l := &Lab{
		id: hex.EncodeToString(id[:]),
		// 10.100.0.0 to 10.249.255.0: labs never see each other (each has
		// its own bridge), so this only keeps addresses apart in logs.
		subnet:  [3]byte{10, byte(100 + mrand.IntN(150)), byte(mrand.IntN(256))},
		nsenter: nsenter,
		nodes:   map[string]*labNode{},
	}
	for i, name := range names {
		if !nodeName.MatchString(name) || name == "hub" {
			return nil, fmt.Errorf("netlab: node name %q: use 1 to 12 characters from a-z, 0-9 and '-' (not \"hub\")", name)
		}
		if _, dup := l.nodes[name]; dup {
			return nil, fmt.Errorf("netlab: node %q given twice", name)
		}
		l.nodes[name] = &labNode{ns: l.nsName(name), ip: net.IPv4(l.subnet[0], l.subnet[1], l.subnet[2], byte(i+1))}
		l.names = append(l.names, name)
	}
	if err := l.build(); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	return l, nil
}

// Start is New for tests: it fails t when the lab cannot be built and
// closes the lab when t ends (register it before the processes that run in
// it, so that they are stopped first).
func Start(t testing.TB, names ...string) *Lab {
	t.Helper()
	l, err := New(names...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("netlab: %v", err)
		}
	})
	return l
}

func findNsenter() (string, error) {
	for _, p := range []string{"nsenter", "/usr/bin/nsenter", "/usr/sbin/nsenter", "/bin/nsenter"} {
		if path, err := exec.LookPath(p); err == nil {
			return path, nil
		}
	}
	return "", errors.New("netlab: program nsenter not found; install it with apt-get install util-linux")
}

func (l *Lab) nsName(node string) string { return Prefix + l.id + "-" + node }

// ID is the lab's random id, part of every namespace name.
func (l *Lab) ID() string { return l.id }

// Subnet is the lab's network, e.g. 10.123.45.0/24.
func (l *Lab) Subnet() string {
	return fmt.Sprintf("%d.%d.%d.0/24", l.subnet[0], l.subnet[1], l.subnet[2])
}

// Nodes returns the node names in the order given to New.
func (l *Lab) Nodes() []string { return append([]string(nil), l.names...) }

// Namespaces returns the names of all the lab's namespaces, the hub's
// included.
func (l *Lab) Namespaces() []string {
	out := []string{l.nsName("hub")}
	for _, name := range l.names {
		out = append(out, l.nodes[name].ns)
	}
	return out
}

// Addr returns node's IPv4 address ("10.X.Y.N"), or "" for an unknown node.
func (l *Lab) Addr(node string) string {
	n, ok := l.nodes[node]
	if !ok {
		return ""
	}
	return n.ip.String()
}

// NetNS returns the path of node's namespace (/run/netns/NAME), or "" for
// an unknown node.
func (l *Lab) NetNS(node string) string {
	n, ok := l.nodes[node]
	if !ok {
		return ""
	}
	return filepath.Join(NetNSDir, n.ns)
}

func (l *Lab) node(name string) (*labNode, error) {
	n, ok := l.nodes[name]
	if !ok {
		return nil, fmt.Errorf("netlab: lab %s has no node %q (it has %v)", l.id, name, l.names)
	}
	return n, nil
}

// build creates the hub with its bridge, then each node.
func (l *Lab) build() error {
	hubNS := l.nsName("hub")
	hub, err := newNamespace(hubNS)
	if err != nil {
		return err
	}
	defer hub.Close()
	h, err := netlink.NewHandleAt(hub)
	if err != nil {
		return fmt.Errorf("netlab: netlink in %s: %w", hubNS, err)
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("netlab: add bridge in %s: %w", hubNS, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("netlab: bring up bridge in %s: %w", hubNS, err)
	}
	for _, name := range l.names {
		if err := l.addNode(h, br, name); err != nil {
			return err
		}
	}
	return nil
}

// addNode creates node name's namespace and its veth pair: eth0 inside,
// ve-<name> on the hub's bridge.
func (l *Lab) addNode(hub *netlink.Handle, br *netlink.Bridge, name string) error {
	n := l.nodes[name]
	ns, err := newNamespace(n.ns)
	if err != nil {
		return err
	}
	defer ns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hubPrefix + name, MasterIndex: br.Attrs().Index},
		PeerName:      nodeIface,
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := hub.LinkAdd(veth); err != nil {
		return fmt.Errorf("netlab: add veth pair for node %s: %w", name, err)
	}
	if err := hub.LinkSetUp(veth); err != nil {
		return fmt.Errorf("netlab: bring up %s in the hub: %w", veth.Name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlab: netlink in %s: %w", n.ns, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("netlab: lo in %s: %w", n.ns, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("netlab: bring up lo in %s: %w", n.ns, err)
	}
	eth, err := h.LinkByName(nodeIface)
	if err != nil {
		return fmt.Errorf("netlab: %s in %s: %w", nodeIface, n.ns, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.ip, Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(eth, addr); err != nil {
		return fmt.Errorf("netlab: add %s to %s in %s: %w", addr, nodeIface, n.ns, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("netlab: bring up %s in %s: %w", nodeIface, n.ns, err)
	}
	return nil
}

// newNamespace creates a network namespace bind-mounted as NetNSDir/name
// and returns a handle to it. netns.NewNamed moves the calling thread into
// the new namespace, so it runs on a thread of its own that is locked and
// never unlocked: that thread ends with its goroutine and no other
// goroutine ever runs in the new namespace by accident.
func newNamespace(name string) (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		ch <- result{h, err}
	}()
	r := <-ch
	if r.err != nil {
		return r.h, fmt.Errorf("netlab: create network namespace %s: %w", name, r.err)
	}
	return r.h, nil
}

// Command returns a command that runs program path with args in node's
// network namespace, through nsenter (which enters the namespace and then
// execs the program, so the command's process is the program itself).
// For an unknown node, the command's Start fails.
func (l *Lab) Command(node, path string, args ...string) *exec.Cmd {
	n, err := l.node(node)
	if err != nil {
		cmd := exec.Command(path, args...)
		cmd.Err = err
		return cmd
	}
	return exec.Command(l.nsenter, append([]string{"--net=" + filepath.Join(NetNSDir, n.ns), "--", path}, args...)...)
}

// Do runs fn on an OS thread that is in node's network namespace: sockets
// that fn creates belong to that namespace for their whole life. fn must
// not start goroutines that create sockets (they may run on other threads).
func (l *Lab) Do(node string, fn func() error) error {
	n, err := l.node(node)
	if err != nil {
		return err
	}
	target, err := netns.GetFromName(n.ns)
	if err != nil {
		return fmt.Errorf("netlab: open namespace %s: %w", n.ns, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netlab: the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("netlab: enter namespace %s: %w", n.ns, err)
			return // the thread stays locked and ends with this goroutine
		}
		ferr := fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		} // else the thread, still in the lab's namespace, ends with this goroutine
		errc <- ferr
	}()
	return <-errc
}

// Listen listens on addr (e.g. ":0", or the node's Addr with a port) in
// node's namespace.
func (l *Lab) Listen(node, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := l.Do(node, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// DialContext returns a dial function whose connections start in node's
// namespace, as if made by a process on that node: it reaches every lab
// address, and 127.0.0.1 is node's own loopback. Use it with addresses, not
// host names.
func (l *Lab) DialContext(node string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := l.Do(node, func() (err error) {
			d := net.Dialer{Timeout: 30 * time.Second}
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// HTTPClient returns an HTTP client that connects from node's namespace
// (60 s timeout per request). Close closes its idle connections.
func (l *Lab) HTTPClient(node string) *http.Client {
	tr := &http.Transport{
		DialContext:         l.DialContext(node),
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     time.Minute,
	}
	l.mu.Lock()
	l.transports = append(l.transports, tr)
	l.mu.Unlock()
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// LimitRate caps the traffic of node's link at bytesPerSecond in each
// direction (a token bucket filter on both ends of its veth pair), to make
// a node slow on purpose; 0 removes the cap.
func (l *Lab) LimitRate(node string, bytesPerSecond int64) error {
	n, err := l.node(node)
	if err != nil {
		return err
	}
	if bytesPerSecond < 0 || bytesPerSecond >= 1<<32 {
		return fmt.Errorf("netlab: rate %d bytes/s out of range (0 to 4 GiB/s)", bytesPerSecond)
	}
	for _, end := range []struct{ ns, link string }{{l.nsName("hub"), hubPrefix + node}, {n.ns, nodeIface}} {
		if err := setRate(end.ns, end.link, uint64(bytesPerSecond)); err != nil {
			return err
		}
	}
	return nil
}

// setRate replaces the root qdisc of link in namespace ns by a token
// bucket filter at rate bytes/s, or, for rate 0, restores the default.
func setRate(ns, link string, rate uint64) error {
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("netlab: open namespace %s: %w", ns, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlab: netlink in %s: %w", ns, err)
	}
	defer h.Close()
	lk, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("netlab: %s in %s: %w", link, ns, err)
	}
	if rate == 0 {
		qs, err := h.QdiscList(lk)
		if err != nil {
			return fmt.Errorf("netlab: list the qdiscs of %s in %s: %w", link, ns, err)
		}
		for _, q := range qs {
			if _, ok := q.(*netlink.Tbf); ok && q.Attrs().Parent == netlink.HANDLE_ROOT {
				if err := h.QdiscDel(q); err != nil {
					return fmt.Errorf("netlab: remove the rate limit of %s in %s: %w", link, ns, err)
				}
			}
		}
		return nil
	}
	// A burst of a tenth of a second (at least 64 KiB, more than a GSO
	// packet) and a queue of half a second.
	burst := max(rate/10, 64<<10)
	tbf := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: lk.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       rate,
		Limit:      uint32(min(rate/2+burst, 1<<31)),
		Buffer:     netlink.Xmittime(rate, uint32(burst)),
	}
	if err := h.QdiscReplace(tbf); err != nil {
		return fmt.Errorf("netlab: limit %s in %s to %d bytes/s: %w", link, ns, rate, err)
	}
	return nil
}

// Close deletes the lab's namespaces (their links and addresses go with
// them) and closes the idle connections of its HTTP clients. It is safe to
// call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	for _, tr := range l.transports {
		tr.CloseIdleConnections()
	}
	var errs []error
	for _, ns := range l.Namespaces() {
		if err := deleteNamespace(ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deleteNamespace removes the bind mount and the file of namespace name,
// which may be missing or half made (New failed part way).
func deleteNamespace(name string) error {
	path := filepath.Join(NetNSDir, name)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("netlab: unmount namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("netlab: delete namespace %s: %w", path, err)
	}
	return nil
}
