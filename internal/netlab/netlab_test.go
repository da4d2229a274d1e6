package netlab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

// rootState is what a lab must never change in the test's own namespace:
// its links and addresses.
func rootState(t *testing.T) string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:", l.Attrs().Name)
		for _, a := range addrs {
			fmt.Fprintf(&b, " %s", a.IPNet)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// TestLabNetwork: two nodes reach each other over the hub's bridge, a
// program started with Command runs in its node's namespace, and the root
// namespace gains no link and no address.
func TestLabNetwork(t *testing.T) {
	testenv.RequireRoot(t)
	ip := testenv.Command(t, "ip")
	before := rootState(t)
	lab := Start(t, "a", "b")
	if after := rootState(t); after != before {
		t.Fatalf("the lab changed the root namespace:\nbefore:\n%safter:\n%s", before, after)
	}
	a, b := lab.Addr("a"), lab.Addr("b")
	if a == b || !strings.HasPrefix(a, "10.") || lab.Addr("c") != "" {
		t.Fatalf("addresses: a=%s b=%s c=%q", a, b, lab.Addr("c"))
	}
	for _, ns := range lab.Namespaces() {
		if _, err := os.Stat(filepath.Join(NetNSDir, ns)); err != nil || !strings.HasPrefix(ns, Prefix+lab.ID()+"-") {
			t.Errorf("namespace %s: %v", ns, err)
		}
	}

	// Command runs in the node's namespace: it sees eth0 with the node's
	// address.
	out, err := lab.Command("a", ip, "-o", "-4", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), a+"/24") {
		t.Fatalf("ip addr in node a: %v\n%s", err, out)
	}
	if err := lab.Command("nowhere", ip, "link").Run(); err == nil || !strings.Contains(err.Error(), `no node "nowhere"`) {
		t.Fatalf("Command on an unknown node: %v", err)
	}

	// A TCP listener in a, dialled from b.
	ln, err := lab.Listen("a", "tcp", a+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "a heard %s", line)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := lab.DialContext("b")(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial a from b: %v", err)
	}
	defer c.Close()
	if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != b {
		t.Errorf("the connection to a comes from %s, want b's address %s", got, b)
	}
	fmt.Fprintf(c, "hello from b\n")
	reply, err := io.ReadAll(c)
	if err != nil || string(reply) != "a heard hello from b\n" {
		t.Fatalf("reply %q, %v", reply, err)
	}

	// HTTP from b to a server in a.
	hln, err := lab.Listen("a", "tcp", a+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "from %s", r.RemoteAddr)
	})}
	go srv.Serve(hln)
	defer srv.Close()
	resp, err := lab.HTTPClient("b").Get("http://" + hln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(body), "from "+b+":") {
		t.Fatalf("HTTP answer %q", body)
	}
	if after := rootState(t); after != before {
		t.Fatalf("the lab changed the root namespace:\nbefore:\n%safter:\n%s", before, after)
	}
}

// TestLabClose: Close removes every namespace of the lab, and again is a
// no-op.
func TestLabClose(t *testing.T) {
	testenv.RequireRoot(t)
	lab, err := New("x", "y", "z")
	if err != nil {
		t.Fatal(err)
	}
	names := lab.Namespaces()
	if len(names) != 4 {
		t.Fatalf("namespaces: %v", names)
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range names {
		if _, err := os.Stat(filepath.Join(NetNSDir, ns)); !os.IsNotExist(err) {
			t.Errorf("namespace %s left after Close: %v", ns, err)
		}
	}
	entries, _ := os.ReadDir(NetNSDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), Prefix+lab.ID()) {
			t.Errorf("left in %s: %s", NetNSDir, e.Name())
		}
	}
	if err := lab.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestLabLimitRate: LimitRate puts a token bucket filter on both ends of
// the node's link and removes it again; traffic still flows under it.
func TestLabLimitRate(t *testing.T) {
	testenv.RequireRoot(t)
	lab := Start(t, "a", "b")
	tbfRate := func(ns, link string) uint64 {
		t.Helper()
		h, err := netns.GetFromName(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		nl, err := netlink.NewHandleAt(h)
		if err != nil {
			t.Fatal(err)
		}
		defer nl.Close()
		lk, err := nl.LinkByName(link)
		if err != nil {
			t.Fatal(err)
		}
		qs, err := nl.QdiscList(lk)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range qs {
			if tbf, ok := q.(*netlink.Tbf); ok {
				return tbf.Rate
			}
		}
		return 0
	}
	hub, node := lab.Namespaces()[0], lab.Namespaces()[1]
	if err := lab.LimitRate("a", 1<<20); err != nil {
		t.Fatal(err)
	}
	if r1, r2 := tbfRate(hub, "ve-a"), tbfRate(node, "eth0"); r1 != 1<<20 || r2 != 1<<20 {
		t.Fatalf("rates after LimitRate: hub end %d, node end %d", r1, r2)
	}

	// 256 KiB from b to a and back through the limit.
	ln, err := lab.Listen("a", "tcp", lab.Addr("a")+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.CopyN(c, c, 256<<10)
	}()
	c, err := lab.DialContext("b")(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 256<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	go c.Write(data)
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil || !slices.Equal(got, data) {
		t.Fatalf("echo through the rate limit: %v", err)
	}

	if err := lab.LimitRate("a", 0); err != nil {
		t.Fatal(err)
	}
	if r1, r2 := tbfRate(hub, "ve-a"), tbfRate(node, "eth0"); r1 != 0 || r2 != 0 {
		t.Fatalf("rates after removing the limit: hub end %d, node end %d", r1, r2)
	}
	if err := lab.LimitRate("a", 0); err != nil {
		t.Fatalf("removing an absent limit: %v", err)
	}
	if err := lab.LimitRate("nowhere", 1); err == nil {
		t.Fatal("LimitRate on an unknown node succeeded")
	}
}

// TestNewRejects: bad node lists fail before anything is created.
func TestNewRejects(t *testing.T) {
	testenv.RequireRoot(t)
	for _, names := range [][]string{nil, {""}, {"hub"}, {"Upper"}, {"a", "a"}, {"name-too-long-x"}, {"a/b"}} {
		if lab, err := New(names...); err == nil {
			lab.Close()
			t.Errorf("New(%q) succeeded", names)
		}
	}
}
