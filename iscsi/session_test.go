package iscsi_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
	"github.com/bulkhead-io/bulkhead/iscsi"
)

const lunSize = 64 << 20

func TestDiscovery(t *testing.T) {
	t.Parallel()
	tg := startTarget(t)
	path, _ := backingFile(t, 1<<20, 1)
	path2, _ := backingFile(t, 1<<20, 2)
	path3, _ := backingFile(t, 1<<20, 3)
	a1 := tg.export(t, "disc-a1", path, initiatorA, false)
	a2 := tg.export(t, "disc-a2", path2, initiatorA, false)
	b1 := tg.export(t, "disc-b1", path3, initiatorB, true)

	for _, tc := range []struct {
		initiator string
		want      []iscsi.DiscoveredTarget
	}{
		{initiatorA, []iscsi.DiscoveredTarget{{Name: a1.IQN, Portals: []string{tg.portal()}}, {Name: a2.IQN, Portals: []string{tg.portal()}}}},
		{initiatorB, []iscsi.DiscoveredTarget{{Name: b1.IQN, Portals: []string{tg.portal()}}}},
		{"iqn.2026-11.io.bulkhead:stranger", nil},
	} {
		got, err := iscsi.Discover(t.Context(), iscsi.Config{Portal: tg.portal(), InitiatorIQN: tc.initiator})
		if err != nil {
			t.Fatalf("Discover as %s: %v", tc.initiator, err)
		}
		slices.SortFunc(got, func(a, b iscsi.DiscoveredTarget) int { return strings.Compare(a.Name, b.Name) })
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("Discover as %s (-want +got):\n%s", tc.initiator, diff)
		}
	}
}

func TestLogin(t *testing.T) {
	t.Parallel()
	tg := startTarget(t)
	path, _ := backingFile(t, 1<<20, 4)
	e := tg.export(t, "login", path, initiatorA, false)
	a := tg.d.Admin()

	// A second target made with Admin directly, without an account: tgt
	// then asks for no authentication and admits whoever is in the ACL.
	const openIQN = iqnPrefix + "login-open"
	const openTID = 50
	must(t, a.NewTarget(t.Context(), openTID, openIQN))
	must(t, a.AddLUN(t.Context(), openTID, 1, path, false))
	must(t, a.BindInitiator(t.Context(), openTID, initiatorB))

	// A third with mutual CHAP: the target answers with an outgoing account.
	path3, _ := backingFile(t, 1<<20, 5)
	m := tg.export(t, "login-mutual", path3, initiatorA, false)
	const targetUser = "bh-target-mutual"
	targetSecret, _ := tgt.NewSecret()
	must(t, a.NewAccount(t.Context(), targetUser, targetSecret))
	must(t, a.BindOutgoingAccount(t.Context(), m.TID, targetUser))

	ok := func(cfg iscsi.Config) func(*testing.T) {
		return func(t *testing.T) {
			s := dial(t, cfg)
			blocks, bs, err := s.ReadCapacity(t.Context(), 1)
			if err != nil {
				t.Fatal(err)
			}
			if blocks*uint64(bs) != 1<<20 {
				t.Errorf("capacity %d blocks of %d bytes, want 1 MiB", blocks, bs)
			}
			if err := s.Close(t.Context()); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
	}
	refused := func(cfg iscsi.Config, code uint16, kind error, text string) func(*testing.T) {
		return func(t *testing.T) {
			s, err := iscsi.Dial(t.Context(), cfg)
			if err == nil {
				s.Close(t.Context())
				t.Fatal("Dial succeeded, want a refusal")
			}
			t.Logf("Dial: %v", err)
			if !errors.Is(err, kind) {
				t.Errorf("Dial error %v is not %v", err, kind)
			}
			if !strings.Contains(err.Error(), text) {
				t.Errorf("Dial error %q does not mention %q", err, text)
			}
			if code != 0 {
				le, ok := errors.AsType[*iscsi.LoginError](err)
				if !ok || le.Code() != code {
					t.Errorf("Dial error %v: want a *LoginError with status 0x%04x", err, code)
				}
			}
		}
	}
	with := func(cfg iscsi.Config, f func(*iscsi.Config)) iscsi.Config {
		f(&cfg)
		return cfg
	}
	chap := tg.config(e)
	open := iscsi.Config{Portal: tg.portal(), TargetIQN: openIQN, InitiatorIQN: initiatorB}
	mutual := with(tg.config(m), func(c *iscsi.Config) { c.MutualUser, c.MutualSecret = targetUser, targetSecret })

	t.Run("CHAP", ok(chap))
	t.Run("NoCHAP", ok(open))
	t.Run("OneWayCHAPToOpenTarget", ok(with(open, func(c *iscsi.Config) { c.CHAPUser, c.CHAPSecret = "someone", "somesecret12" })))
	t.Run("MutualCHAP", ok(mutual))
	t.Run("WrongSecret", refused(with(chap, func(c *iscsi.Config) { c.CHAPSecret = "wrong-secret" }),
		0x0201, errdefs.ErrUnauthenticated, "authentication failure (0x0201)"))
	t.Run("NoCredentials", refused(with(chap, func(c *iscsi.Config) { c.CHAPUser, c.CHAPSecret = "", "" }),
		0x0201, errdefs.ErrUnauthenticated, "authentication failure"))
	t.Run("ForeignInitiator", refused(with(chap, func(c *iscsi.Config) { c.InitiatorIQN = initiatorB }),
		0x0203, errdefs.ErrNotFound, "refused"))
	t.Run("ForeignInitiatorOpenTarget", refused(with(open, func(c *iscsi.Config) { c.InitiatorIQN = initiatorA }),
		0x0203, errdefs.ErrNotFound, "refused"))
	t.Run("WrongTarget", refused(with(chap, func(c *iscsi.Config) { c.TargetIQN = iqnPrefix + "no-such-target" }),
		0x0203, errdefs.ErrNotFound, "not found"))
	t.Run("MutualWrongTargetSecret", refused(with(mutual, func(c *iscsi.Config) { c.MutualSecret = "not-the-target" }),
		0, errdefs.ErrUnauthenticated, "failed mutual CHAP authentication"))
	t.Run("MutualWrongTargetName", refused(with(mutual, func(c *iscsi.Config) { c.MutualUser = "someone-else" }),
		0, errdefs.ErrUnauthenticated, "failed mutual CHAP authentication"))
	// tgt has no outgoing account for this target, so it cannot answer.
	t.Run("MutualTargetWithoutAccount", refused(with(chap, func(c *iscsi.Config) { c.MutualUser, c.MutualSecret = targetUser, targetSecret }),
		0x0201, errdefs.ErrUnauthenticated, "authentication failure"))
	// A target that wants no authentication cannot prove itself: offered
	// only CHAP, tgt refuses.
	t.Run("MutualToOpenTarget", refused(with(open, func(c *iscsi.Config) {
		c.CHAPUser, c.CHAPSecret, c.MutualUser, c.MutualSecret = "someone", "somesecret12", targetUser, targetSecret
	}), 0x0201, errdefs.ErrUnauthenticated, "authentication failure"))
	t.Run("NoTgtd", refused(with(chap, func(c *iscsi.Config) { c.Portal = "127.0.0.1:1" }), 0, errdefs.ErrUnavailable, "connect"))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// lun is a target exporting lunSize random bytes, and a session to it.
type lun struct {
	tg   *target
	e    tgt.Export
	path string
	data []byte
	s    *iscsi.Session
}

func newLUN(t *testing.T, name string, size int, readOnly bool, tweak func(*iscsi.Config)) *lun {
	t.Helper()
	tg := startTarget(t)
	path, data := backingFile(t, size, uint64(len(name)))
	e := tg.export(t, name, path, initiatorA, readOnly)
	cfg := tg.config(e)
	if tweak != nil {
		tweak(&cfg)
	}
	return &lun{tg: tg, e: e, path: path, data: data, s: dial(t, cfg)}
}

func TestRead(t *testing.T) {
	t.Parallel()
	l := newLUN(t, "read", lunSize, false, func(c *iscsi.Config) { c.MaxInFlight = 16 })
	s := l.s
	blocks, bs, err := s.ReadCapacity(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := int(blocks) * int(bs); got != lunSize || bs != 512 {
		t.Fatalf("ReadCapacity: %d blocks of %d bytes = %d, want %d bytes in 512-byte blocks", blocks, bs, got, lunSize)
	}
	t.Logf("negotiated: %+v", s.Params())

	buf := make([]byte, lunSize)
	n, err := s.ReadAt(t.Context(), 1, buf, 0)
	if err != nil || n != lunSize {
		t.Fatalf("ReadAt whole LUN = %d, %v", n, err)
	}
	if sha256.Sum256(buf) != sha256.Sum256(l.data) {
		t.Fatal("whole-LUN read differs from the backing file")
	}

	// Pieces: one block, across the MaxBurstLength split, the last block.
	for _, r := range []struct{ off, n int }{{0, 512}, {512, 512}, {262144 - 512, 4096}, {3 << 20, 1<<20 + 512}, {lunSize - 512, 512}} {
		p := make([]byte, r.n)
		n, err := s.ReadAt(t.Context(), 1, p, int64(r.off))
		if err != nil || n != r.n {
			t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", r.n, r.off, n, err)
		}
		if !bytes.Equal(p, l.data[r.off:r.off+r.n]) {
			t.Errorf("ReadAt(%d bytes at %d): wrong data", r.n, r.off)
		}
	}

	// Concurrent readers share the session.
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			off := g * (lunSize / 4)
			p := make([]byte, lunSize/4)
			_, err := s.ReadAt(t.Context(), 1, p, int64(off))
			if err == nil && !bytes.Equal(p, l.data[off:off+len(p)]) {
				err = errors.New("wrong data")
			}
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent ReadAt: %v", err)
		}
	}

	// Past the end: the target says so.
	_, err = s.ReadAt(t.Context(), 1, make([]byte, 1024), lunSize-512)
	if se, ok := errors.AsType[*iscsi.SCSIError](err); !ok || se.Sense.Key != iscsi.SenseIllegalRequest || !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("ReadAt past the end: %v, want ILLEGAL REQUEST", err)
	} else {
		t.Logf("ReadAt past the end: %v", err)
	}
	// A LUN that does not exist.
	if _, _, err := s.ReadCapacity(t.Context(), 7); err == nil {
		t.Error("ReadCapacity of LUN 7 succeeded")
	} else {
		t.Logf("ReadCapacity(LUN 7): %v", err)
	}
}

func TestDisk(t *testing.T) {
	t.Parallel()
	l := newLUN(t, "disk", 8<<20, false, nil)
	d, err := l.s.LUN(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 8<<20 || d.BlockSize() != 512 {
		t.Fatalf("Disk size %d, block size %d", d.Size(), d.BlockSize())
	}
	h := sha256.New()
	if n, err := io.Copy(h, io.NewSectionReader(d, 0, d.Size())); err != nil || n != d.Size() {
		t.Fatalf("copy the disk: %d, %v", n, err)
	}
	if !bytes.Equal(h.Sum(nil), sha256Of(l.data)) {
		t.Error("disk content differs from the backing file")
	}
	// A read across the end returns what there is and io.EOF.
	p := make([]byte, 4096)
	n, err := d.ReadAt(p, d.Size()-1024)
	if n != 1024 || err != io.EOF || !bytes.Equal(p[:n], l.data[len(l.data)-1024:]) {
		t.Errorf("ReadAt across the end = %d, %v", n, err)
	}
	if n, err := d.ReadAt(p, d.Size()); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at the end = %d, %v", n, err)
	}
	if _, err := d.WriteAt(p, d.Size()-512); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("WriteAt across the end: %v, want ErrInvalid", err)
	}
}

func sha256Of(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func TestUnaligned(t *testing.T) {
	t.Parallel()
	l := newLUN(t, "unaligned", 1<<20, false, nil)
	for _, r := range []struct {
		off int64
		n   int
	}{{1, 512}, {0, 511}, {511, 1}, {512, 100}, {-512, 512}} {
		p := make([]byte, r.n)
		if n, err := l.s.ReadAt(t.Context(), 1, p, r.off); n != 0 || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "block size 512") {
			t.Errorf("ReadAt(%d bytes at %d) = %d, %v; want ErrInvalid naming the block size", r.n, r.off, n, err)
		}
		if n, err := l.s.WriteAt(t.Context(), 1, p, r.off); n != 0 || !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("WriteAt(%d bytes at %d) = %d, %v; want ErrInvalid", r.n, r.off, n, err)
		}
	}
	if n, err := l.s.ReadAt(t.Context(), 1, nil, 512); n != 0 || err != nil {
		t.Errorf("empty ReadAt = %d, %v", n, err)
	}
	// Nothing was written.
	if got, _ := os.ReadFile(l.path); !bytes.Equal(got, l.data) {
		t.Error("backing file changed")
	}
}

func TestWrite(t *testing.T) {
	t.Parallel()
	l := newLUN(t, "write", lunSize, false, nil)
	s := l.s
	// tgt answers InitialR2T=Yes and FirstBurstLength=65536, so anything
	// beyond the first 64 KiB of a write waits for an R2T.
	p := s.Params()
	t.Logf("negotiated: %+v", p)
	if !p.InitialR2T || !p.ImmediateData || p.FirstBurstLength != 65536 || p.MaxBurstLength != 262144 {
		t.Errorf("negotiated %+v; the test expects tgt's InitialR2T=Yes, ImmediateData=Yes, FirstBurstLength=65536, MaxBurstLength=262144", p)
	}
	want := slices.Clone(l.data)
	rng := rand.New(rand.NewPCG(7, 7))
	for _, r := range []struct{ off, n int }{
		{0, 512},
		{1<<20 + 512, 3 * 512},
		{2 << 20, 65536},              // exactly the first burst: immediate data only
		{3 << 20, 65536 + 512},        // one block more: an R2T
		{10 << 20, 1<<20 + 4096},      // several commands, each with R2Ts
		{32<<20 - 4096, 3<<20 + 8192}, // more commands than MaxInFlight? no, but many in flight
		{lunSize - 8192, 8192},        // the end
	} {
		data := make([]byte, r.n)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		n, err := s.WriteAt(t.Context(), 1, data, int64(r.off))
		if err != nil || n != r.n {
			t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", r.n, r.off, n, err)
		}
		copy(want[r.off:], data)
		back := make([]byte, r.n)
		if _, err := s.ReadAt(t.Context(), 1, back, int64(r.off)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back, data) {
			t.Errorf("ReadAt after WriteAt(%d bytes at %d): wrong data", r.n, r.off)
		}
	}
	all := make([]byte, lunSize)
	if _, err := s.ReadAt(t.Context(), 1, all, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(all, want) {
		t.Error("LUN content after the writes differs from what was written")
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(l.path); !bytes.Equal(got, want) {
		t.Error("backing file after the writes differs from what was written")
	}
}

func TestReadOnly(t *testing.T) {
	t.Parallel()
	l := newLUN(t, "readonly", 1<<20, true, nil)
	_, err := l.s.WriteAt(t.Context(), 1, make([]byte, 4096), 0)
	se, ok := errors.AsType[*iscsi.SCSIError](err)
	if !ok || se.Status != iscsi.StatusCheckCondition || se.Sense.Key != iscsi.SenseDataProtect ||
		!errors.Is(err, errdefs.ErrForbidden) || !strings.Contains(err.Error(), "write protected") {
		t.Fatalf("WriteAt to a read-only LUN: %v; want CHECK CONDITION, DATA PROTECT, write protected", err)
	}
	t.Logf("WriteAt: %v", err)
	p := make([]byte, 4096)
	if _, err := l.s.ReadAt(t.Context(), 1, p, 0); err != nil || !bytes.Equal(p, l.data[:4096]) {
		t.Errorf("ReadAt of a read-only LUN: %v", err)
	}
	if got, _ := os.ReadFile(l.path); !bytes.Equal(got, l.data) {
		t.Error("backing file changed")
	}
}

func TestUnitAttentionRetried(t *testing.T) {
	t.Parallel()
	tg := startTarget(t)
	path, data := backingFile(t, 1<<20, 9)
	e := tg.export(t, "ua", path, initiatorA, false)
	for i := range 2 { // every new session gets one
		rec := &logRecorder{}
		cfg := tg.config(e)
		cfg.Logger = slog.New(rec)
		s := dial(t, cfg)
		p := make([]byte, 8192)
		// ReadAt first asks for the block size: READ CAPACITY(16) is the
		// session's first command, and gets the UNIT ATTENTION.
		if _, err := s.ReadAt(t.Context(), 1, p, 0); err != nil {
			t.Fatalf("session %d: first ReadAt: %v", i, err)
		}
		if !bytes.Equal(p, data[:8192]) {
			t.Errorf("session %d: wrong data", i)
		}
		ua := rec.matching("UNIT ATTENTION")
		if len(ua) != 1 {
			t.Fatalf("session %d: logged %q, want one retried UNIT ATTENTION", i, ua)
		}
		if !strings.Contains(ua[0], "power on, reset, or bus device reset occurred") {
			t.Errorf("session %d: UNIT ATTENTION for %q, want power on/reset", i, ua[0])
		}
		t.Logf("session %d: %s", i, ua[0])
		if _, err := s.ReadAt(t.Context(), 1, p, 0); err != nil {
			t.Fatal(err)
		}
		if ua := rec.matching("UNIT ATTENTION"); len(ua) != 1 {
			t.Errorf("session %d: a second UNIT ATTENTION: %q", i, ua)
		}
	}
}

// readAll reads the whole LUN again and again until it fails, telling
// started after the first pass.
func readAll(ctx context.Context, s *iscsi.Session, size int, started chan<- struct{}) error {
	p := make([]byte, size)
	for pass := 0; ; pass++ {
		if _, err := s.ReadAt(ctx, 1, p, 0); err != nil {
			return err
		}
		if pass == 0 {
			close(started)
		}
	}
}

func TestTargetRestart(t *testing.T) {
	t.Parallel()
	tg := startTarget(t)
	path, data := backingFile(t, lunSize, 10)
	e := tg.export(t, "restart", path, initiatorA, false)
	cfg := tg.config(e)
	cfg.Timeout = 10 * time.Second
	s := dial(t, cfg)

	started := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- readAll(context.Background(), s, lunSize, started) }()
	<-started
	tg.restart(t)
	err := within(t, 2*cfg.Timeout, "ReadAt while tgtd restarts", func() error { return <-done })
	t.Logf("ReadAt while tgtd restarted: %v", err)
	if !errors.Is(err, iscsi.ErrSessionBroken) || !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "connection") {
		t.Errorf("ReadAt while tgtd restarted: %v; want ErrSessionBroken saying the connection went", err)
	}
	// The broken session fails at once from now on.
	if _, err := s.ReadAt(t.Context(), 1, make([]byte, 512), 0); !errors.Is(err, iscsi.ErrSessionBroken) {
		t.Errorf("ReadAt on the broken session: %v", err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("Close of the broken session: %v", err)
	}

	// The new tgtd knows nothing: export again, and a new session works.
	e = tg.export(t, "restart", path, initiatorA, false)
	s2 := dial(t, tg.config(e))
	p := make([]byte, lunSize)
	if _, err := s2.ReadAt(t.Context(), 1, p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, data) {
		t.Error("read after the restart differs from the backing file")
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	l := newLUN(t, "timeout", 4<<20, false, func(c *iscsi.Config) { c.Timeout = 2 * time.Second })
	if _, _, err := l.s.ReadCapacity(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	resume := l.tg.stop(t)
	err := within(t, time.Minute, "ReadAt from a frozen tgtd", func() error {
		_, err := l.s.ReadAt(t.Context(), 1, make([]byte, 1<<20), 0)
		return err
	})
	t.Logf("ReadAt from a frozen tgtd: %v", err)
	if !errors.Is(err, iscsi.ErrTimeout) || !errors.Is(err, iscsi.ErrSessionBroken) || !strings.Contains(err.Error(), "no answer within 2s") {
		t.Errorf("ReadAt from a frozen tgtd: %v; want ErrTimeout and ErrSessionBroken", err)
	}
	resume()
	_, err = l.s.ReadAt(t.Context(), 1, make([]byte, 512), 0)
	if !errors.Is(err, iscsi.ErrSessionBroken) {
		t.Errorf("ReadAt after the timeout: %v, want ErrSessionBroken", err)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	rec := &logRecorder{}
	l := newLUN(t, "cancel", 16<<20, false, func(c *iscsi.Config) { c.Logger = slog.New(rec) }) // Timeout 20 s
	s := l.s
	if _, _, err := s.ReadCapacity(t.Context(), 1); err != nil {
		t.Fatal(err)
	}

	t.Run("Read", func(t *testing.T) {
		resume := l.tg.stop(t)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := s.ReadAt(ctx, 1, make([]byte, 16<<20), 0)
			done <- err
		}()
		l.tg.waitQueued(t, 16*48) // MaxInFlight READ(16)s
		cancel()
		// Well before the 20 s timeout: only the cancellation can end it.
		err := within(t, 10*time.Second, "cancelled ReadAt", func() error { return <-done })
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled ReadAt: %v, want context.Canceled", err)
		}
		resume()
		// The session survives: the target answers the abandoned reads,
		// whose data is dropped, and the next read works.
		p := make([]byte, 16<<20)
		if _, err := s.ReadAt(t.Context(), 1, p, 0); err != nil {
			t.Fatalf("ReadAt after a cancelled one: %v", err)
		}
		if !bytes.Equal(p, l.data) {
			t.Error("wrong data after a cancelled read")
		}
	})

	t.Run("Write", func(t *testing.T) {
		resume := l.tg.stop(t)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		// Two commands, each with 8 KiB of immediate data (tgt's
		// MaxRecvDataSegmentLength); the rest waits for R2Ts that come
		// after the cancellation.
		junk := bytes.Repeat([]byte{0xee}, 512<<10)
		go func() {
			_, err := s.WriteAt(ctx, 1, junk, 0)
			done <- err
		}()
		l.tg.waitQueued(t, 2*(48+8192)) // both commands with their immediate data
		cancel()
		err := within(t, 10*time.Second, "cancelled WriteAt", func() error { return <-done })
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled WriteAt: %v, want context.Canceled", err)
		}
		resume()
		// The session goes on.
		p := make([]byte, 1<<20)
		if _, err := s.ReadAt(t.Context(), 1, p, 8<<20); err != nil {
			t.Fatalf("ReadAt after a cancelled write: %v", err)
		}
		if !bytes.Equal(p, l.data[8<<20:9<<20]) {
			t.Error("wrong data after a cancelled write")
		}
		// The abandoned writes complete in the background, with the data
		// the caller gave: a cancelled write may still land.
		var completed []string
		for range 100 {
			if completed = rec.matching("abandoned write completed"); len(completed) == 2 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, c := range completed {
			t.Log(c)
		}
		if len(completed) != 2 {
			t.Fatalf("%d abandoned writes completed, want 2", len(completed))
		}
		if _, err := s.ReadAt(t.Context(), 1, p[:len(junk)], 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p[:len(junk)], junk) {
			t.Error("the abandoned writes did not write the caller's data")
		}
		copy(l.data, junk)
	})
}
