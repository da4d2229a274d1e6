package iscsi_test

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/bulkhead-io/bulkhead/internal/tgt"
	"github.com/bulkhead-io/bulkhead/iscsi"
)

var recordPDUs = flag.Bool("record-pdus", false, "record a session with tgtd into testdata/fuzz/FuzzDecodePDU (seeds of FuzzDecodePDU)")

// TestRecordPDUs runs a discovery and a session with mutual CHAP, a read
// (with its UNIT ATTENTION), writes that need R2Ts and a logout through a
// proxy that keeps the PDUs both sides sent, and, with -record-pdus, writes
// up to three small ones of each opcode and direction to the fuzz corpus.
// TestRealPDUs checks those decode and encode back to the same bytes.
func TestRecordPDUs(t *testing.T) {
	t.Parallel()
	tg := startTarget(t)
	path, _ := backingFile(t, 1<<20, 11)
	e := tg.export(t, "record", path, initiatorA, false)
	a := tg.d.Admin()
	const targetUser = "bh-target-record"
	targetSecret, _ := tgt.NewSecret()
	must(t, a.NewAccount(t.Context(), targetUser, targetSecret))
	must(t, a.BindOutgoingAccount(t.Context(), e.TID, targetUser))

	rec := &recorder{seen: map[string]int{}}
	proxy := rec.proxy(t, tg.portal())
	cfg := tg.config(e)
	cfg.Portal, cfg.MutualUser, cfg.MutualSecret = proxy, targetUser, targetSecret
	if _, err := iscsi.Discover(t.Context(), iscsi.Config{Portal: proxy, InitiatorIQN: e.Initiator}); err != nil {
		t.Fatal(err)
	}
	s := dial(t, cfg)
	p := make([]byte, 1024)
	if _, err := s.ReadAt(t.Context(), 1, p, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteAt(t.Context(), 1, make([]byte, 8192+1024), 0); err != nil { // immediate data, then an R2T
		t.Fatal(err)
	}
	if _, err := s.ReadAt(t.Context(), 1, p, 1<<20); err == nil { // CHECK CONDITION
		t.Fatal("read past the end succeeded")
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	rec.wg.Wait()

	rec.mu.Lock()
	defer rec.mu.Unlock()
	t.Logf("recorded %d PDUs: %v", len(rec.pdus), rec.seen)
	if !*recordPDUs {
		return
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodePDU")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(dir, "real-*"))
	for _, f := range old {
		os.Remove(f)
	}
	for name, b := range rec.pdus {
		if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type recorder struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	seen map[string]int    // PDUs per direction and opcode
	pdus map[string][]byte // file name → PDU
}

// proxy forwards every connection to target and returns its address.
func (r *recorder) proxy(t *testing.T, target string) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	r.pdus = map[string][]byte{}
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			r.wg.Add(2)
			go r.pipe(in, out, "initiator")
			go r.pipe(out, in, "target")
		}
	}()
	return l.Addr().String()
}

// pipe copies PDUs from src to dst, keeping small ones.
func (r *recorder) pipe(src, dst net.Conn, from string) {
	defer r.wg.Done()
	defer dst.Close()
	for {
		var h [48]byte
		if _, err := io.ReadFull(src, h[:]); err != nil {
			return
		}
		n := int(h[4])*4 + int(binary.BigEndian.Uint32(h[4:8])&0xffffff)
		n += -n & 3
		pdu := make([]byte, 48+n)
		copy(pdu, h[:])
		if _, err := io.ReadFull(src, pdu[48:]); err != nil {
			return
		}
		if _, err := dst.Write(pdu); err != nil {
			return
		}
		key := fmt.Sprintf("%s-%02x", from, h[0]&0x3f)
		r.mu.Lock()
		r.seen[key]++
		if len(pdu) <= 4096 && r.seen[key] <= 3 {
			r.pdus[fmt.Sprintf("real-%s-%d", key, r.seen[key])] = pdu
		}
		r.mu.Unlock()
	}
}
