package tgt_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
)

func newExport(t *testing.T, name, path string) tgt.Export {
	return tgt.Export{
		IQN:       prefix + name,
		Path:      path,
		Initiator: initiatorA,
		User:      tgt.NewUser(name),
		Secret:    newSecret(t),
	}
}

func TestExportServesData(t *testing.T) {
	t.Parallel()
	p := needPrograms(t)
	d := startTgtd(t)
	x := &tgt.Exporter{Admin: d.Admin()}
	ctx := t.Context()
	const size = 64 << 20
	path, data := backingFile(t, size, 1)
	e := newExport(t, "snap-data", path)

	got, err := x.Export(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if got.TID != 1 {
		t.Errorf("Export gave tid %d, want 1 (the lowest free)", got.TID)
	}
	c := clientFor(p, d, e)
	if err := c.inq(ctx); err != nil {
		t.Fatalf("iscsi-inq with the export's credentials: %v", err)
	}
	if n, err := c.capacity(ctx); err != nil || n != size {
		t.Errorf("iscsi-readcapacity16 = %d, %v; want %d", n, err, size)
	}
	out, err := c.read(ctx, t)
	if err != nil {
		t.Fatalf("qemu-img convert from the LUN: %v", err)
	}
	if !bytes.Equal(out, data) {
		t.Errorf("read %d bytes that differ from the backing file's %d", len(out), len(data))
	}

	wrong := c
	wrong.secret = "wrongsecret1234"
	if err := wrong.inq(ctx); err == nil {
		t.Error("iscsi-inq with a wrong CHAP secret succeeded")
	}
	if out, err := wrong.read(ctx, t); err == nil || len(out) > 0 {
		t.Errorf("qemu-img with a wrong CHAP secret: %d bytes, %v; want refused", len(out), err)
	}
	noCHAP := c
	noCHAP.user = ""
	if err := noCHAP.inq(ctx); err == nil {
		t.Error("iscsi-inq without CHAP succeeded")
	}
	foreign := c
	foreign.initiator = initiatorB
	if err := foreign.inq(ctx); err == nil {
		t.Error("iscsi-inq as an initiator the ACL does not name succeeded")
	}
	if out, err := foreign.read(ctx, t); err == nil || len(out) > 0 {
		t.Errorf("qemu-img as a foreign initiator: %d bytes, %v; want refused", len(out), err)
	}

	list, err := x.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := e
	want.Secret, want.TID = "", 1
	if diff := cmp.Diff([]tgt.Export{want}, list); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	tg := show(t, d.Admin())[0]
	if l := tg.LUNs[0]; l.BackingStore != path || l.SizeBytes < size-1_000_000 || l.SizeBytes > size+1_000_000 {
		t.Errorf("Show LUN = %+v, want %s of about %d bytes", l, path, size)
	}
	if diff := cmp.Diff([]string{initiatorA}, tg.Initiators); diff != "" || len(tg.Addresses) != 0 {
		t.Errorf("ACL names %v, addresses %v; want only %s", tg.Initiators, tg.Addresses, initiatorA)
	}
}

func TestExportIdempotentAndFixUp(t *testing.T) {
	t.Parallel()
	p := needPrograms(t)
	d := startTgtd(t)
	a := d.Admin()
	x := &tgt.Exporter{Admin: a}
	ctx := t.Context()
	path, _ := backingFile(t, 4<<20, 2)
	e := newExport(t, "snap-fix", path)

	first, err := x.Export(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	c := clientFor(p, d, e)
	c.session(t)
	waitSession(t, a, e.IQN, initiatorA)
	before := show(t, a)

	again, err := x.Export(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if again != first {
		t.Errorf("Export again = %+v, want %+v", again, first)
	}
	// Unchanged down to the session: nothing was re-created.
	if diff := cmp.Diff(before, show(t, a)); diff != "" {
		t.Errorf("Export of an existing export changed tgt (-before +after):\n%s", diff)
	}
	if users := accounts(t, a); !cmp.Equal(users, []string{e.User}) {
		t.Errorf("accounts %v, want only %s", users, e.User)
	}

	// Another initiator replaces the first, whose session ends.
	e.Initiator = initiatorB
	if _, err := x.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	targets := show(t, a)
	if len(targets) != 1 || !cmp.Equal(targets[0].Initiators, []string{initiatorB}) {
		t.Fatalf("after changing the initiator: %+v", targets)
	}
	for _, s := range targets[0].Sessions {
		if s.Initiator == initiatorA {
			t.Errorf("session %+v of the initiator taken off the ACL is still there", s)
		}
	}
	if err := c.inq(ctx); err == nil {
		t.Error("the old initiator still logs in")
	}
	c = clientFor(p, d, e)
	if err := c.inq(ctx); err != nil {
		t.Errorf("the new initiator: %v", err)
	}

	// A new secret: the old one stops working.
	old := c
	e.Secret = newSecret(t)
	if _, err := x.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	c = clientFor(p, d, e)
	if err := old.inq(ctx); err == nil {
		t.Error("the old secret still logs in")
	}
	if err := c.inq(ctx); err != nil {
		t.Errorf("the new secret: %v", err)
	}

	// A new user: the old account goes.
	oldUser := e.User
	e.User = tgt.NewUser("snap-fix-2")
	if _, err := x.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	if users := accounts(t, a); !cmp.Equal(users, []string{e.User}) {
		t.Errorf("accounts %v, want only %s (not %s)", users, e.User, oldUser)
	}
	c = clientFor(p, d, e)
	if err := c.inq(ctx); err != nil {
		t.Errorf("the new user: %v", err)
	}

	// Another backing file: the target serves it.
	const size2 = 8 << 20
	path2, data2 := backingFile(t, size2, 3)
	e.Path = path2
	got, err := x.Export(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if got.TID != first.TID {
		t.Errorf("re-created target got tid %d, want %d back", got.TID, first.TID)
	}
	if n, err := c.capacity(ctx); err != nil || n != size2 {
		t.Errorf("capacity after changing the file = %d, %v; want %d", n, err, size2)
	}
	if out, err := c.read(ctx, t); err != nil || !bytes.Equal(out, data2) {
		t.Errorf("read after changing the file: %d bytes, %v; want the new file's content", len(out), err)
	}

	// Read-only in place.
	e.ReadOnly = true
	if _, err := x.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	if l := show(t, a)[0].LUNs; len(l) != 1 || !l[0].ReadOnly {
		t.Errorf("LUNs after asking for read-only: %+v", l)
	}
	if targets, users := show(t, a), accounts(t, a); len(targets) != 1 || len(users) != 1 {
		t.Errorf("after all the changes: targets %+v, accounts %v; want one of each", targets, users)
	}
}

func TestExportReadOnly(t *testing.T) {
	t.Parallel()
	p := needPrograms(t)
	d := startTgtd(t)
	x := &tgt.Exporter{Admin: d.Admin()}
	ctx := t.Context()
	roPath, roData := backingFile(t, 4<<20, 4)
	rwPath, rwData := backingFile(t, 4<<20, 5)
	newData, _ := backingFile(t, 1<<20, 6)

	ro := newExport(t, "snap-ro", roPath)
	ro.ReadOnly = true
	rw := newExport(t, "vol-rw", rwPath)
	for _, e := range []tgt.Export{ro, rw} {
		if _, err := x.Export(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := clientFor(p, d, ro).write(ctx, newData); err == nil {
		t.Error("qemu-img wrote into a read-only export")
	}
	if !bytes.Equal(contents(t, roPath), roData) {
		t.Error("the read-only export's backing file changed")
	}
	if out, err := clientFor(p, d, ro).read(ctx, t); err != nil || !bytes.Equal(out, roData) {
		t.Errorf("reading the read-only export: %d bytes, %v", len(out), err)
	}
	// The same write goes through a writable export, so the refusal above
	// is the read-only flag's doing.
	if err := clientFor(p, d, rw).write(ctx, newData); err != nil {
		t.Errorf("qemu-img into a writable export: %v", err)
	}
	if got := contents(t, rwPath); bytes.Equal(got, rwData) || !bytes.Equal(got[:1<<20], contents(t, newData)) {
		t.Error("the write into the writable export did not reach its backing file")
	}
	list, err := x.List(ctx)
	if err != nil || len(list) != 2 || !list[0].ReadOnly || list[1].ReadOnly {
		t.Errorf("List = %+v, %v; want the first read-only, the second not", list, err)
	}
}

func TestUnexport(t *testing.T) {
	t.Parallel()
	p := needPrograms(t)
	d := startTgtd(t)
	a := d.Admin()
	x := &tgt.Exporter{Admin: a}
	ctx := t.Context()
	path, _ := backingFile(t, 4<<20, 7)
	e := newExport(t, "snap-gone", path)
	if _, err := x.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	c := clientFor(p, d, e)
	// Initiators reading hard: tgt refuses to delete a LUN with commands in
	// flight, even with --force.
	c.session(t)
	c.session(t)
	waitSession(t, a, e.IQN, e.Initiator)

	if err := x.Unexport(ctx, e.IQN); err != nil {
		t.Fatalf("Unexport with sessions logged in: %v", err)
	}
	if targets, users := show(t, a), accounts(t, a); len(targets) != 0 || len(users) != 0 {
		t.Errorf("after Unexport: targets %+v, accounts %v; want none", targets, users)
	}
	if err := c.inq(ctx); err == nil {
		t.Error("logged in to an unexported target")
	}
	if err := x.Unexport(ctx, e.IQN); err != nil {
		t.Errorf("second Unexport: %v", err)
	}
	if err := x.Unexport(ctx, prefix+"never-was"); err != nil {
		t.Errorf("Unexport of an unknown IQN: %v", err)
	}
	// Exporting again after Unexport works (the secret memory was cleared
	// with the account).
	if _, err := x.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := c.inq(ctx); err != nil {
		t.Errorf("after exporting again: %v", err)
	}
}

func TestExportFailuresLeaveNothing(t *testing.T) {
	t.Parallel()
	needPrograms(t)
	d := startTgtd(t)
	a := d.Admin()
	x := &tgt.Exporter{Admin: a}
	ctx := t.Context()
	path, _ := backingFile(t, 1<<20, 8)

	// tgt cannot open the file: the target made before AddLUN goes again.
	e := newExport(t, "snap-missing", path+".missing")
	if _, err := x.Export(ctx, e); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Export of a missing file = %v, want ErrInvalid", err)
	}
	if targets, users := show(t, a), accounts(t, a); len(targets) != 0 || len(users) != 0 {
		t.Errorf("after a failed Export: targets %+v, accounts %v; want none", targets, users)
	}

	e = newExport(t, "snap-short", path)
	e.Secret = "short"
	if _, err := x.Export(ctx, e); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Export with a 5-character secret = %v, want ErrInvalid", err)
	}
	e.Secret = newSecret(t)
	e.Initiator = "ALL"
	if _, err := x.Export(ctx, e); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Export to initiator ALL = %v, want ErrInvalid", err)
	}
	if targets := show(t, a); len(targets) != 0 {
		t.Errorf("invalid exports reached tgt: %+v", targets)
	}

	// One CHAP user for two exports is a conflict, and the first stays.
	first := newExport(t, "snap-one", path)
	if _, err := x.Export(ctx, first); err != nil {
		t.Fatal(err)
	}
	second := newExport(t, "snap-two", path)
	second.User = first.User
	if _, err := x.Export(ctx, second); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("Export with another export's user = %v, want ErrConflict", err)
	}
	if targets := show(t, a); len(targets) != 1 || targets[0].IQN != first.IQN || !cmp.Equal(targets[0].Accounts, []string{first.User}) {
		t.Errorf("after the conflict: %+v", targets)
	}
}

func TestReconcile(t *testing.T) {
	t.Parallel()
	p := needPrograms(t)
	d := startTgtd(t)
	a := d.Admin()
	x := &tgt.Exporter{Admin: a}
	ctx := t.Context()
	path, _ := backingFile(t, 4<<20, 9)
	owns := func(iqn string) bool { return strings.HasPrefix(iqn, prefix) }

	keep := newExport(t, "snap-keep", path)
	drop := newExport(t, "snap-drop", path)
	for _, e := range []tgt.Export{keep, drop} {
		if _, err := x.Export(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	// A target somebody else made, with its own account.
	const foreignIQN = "iqn.2010-01.org.example:theirs"
	if err := a.NewTarget(ctx, 7, foreignIQN); err != nil {
		t.Fatal(err)
	}
	if err := a.AddLUN(ctx, 7, 1, path, false); err != nil {
		t.Fatal(err)
	}
	if err := a.NewAccount(ctx, "theirs", "theirsecret12"); err != nil {
		t.Fatal(err)
	}
	if err := a.BindAccount(ctx, 7, "theirs"); err != nil {
		t.Fatal(err)
	}
	if err := a.BindAddress(ctx, 7, "ALL"); err != nil {
		t.Fatal(err)
	}
	foreignBefore := *findTarget(show(t, a), foreignIQN)
	keepBefore := *findTarget(show(t, a), keep.IQN)

	add := newExport(t, "snap-add", path)
	if err := x.Reconcile(ctx, []tgt.Export{keep, add}, owns); err != nil {
		t.Fatal(err)
	}
	targets := show(t, a)
	if findTarget(targets, drop.IQN) != nil {
		t.Errorf("Reconcile left the unwanted %s", drop.IQN)
	}
	if got := findTarget(targets, keep.IQN); got == nil || !cmp.Equal(*got, keepBefore) {
		t.Errorf("Reconcile changed the wanted, unchanged %s: %+v, was %+v", keep.IQN, got, keepBefore)
	}
	if got := findTarget(targets, foreignIQN); got == nil || !cmp.Equal(*got, foreignBefore) {
		t.Errorf("Reconcile touched the foreign target: %+v, was %+v", got, foreignBefore)
	}
	if findTarget(targets, add.IQN) == nil {
		t.Fatalf("Reconcile did not create %s", add.IQN)
	}
	if err := clientFor(p, d, add).inq(ctx); err != nil {
		t.Errorf("logging in to the export Reconcile made: %v", err)
	}
	users := accounts(t, a)
	for _, u := range []string{keep.User, add.User, "theirs"} {
		if !strings.Contains(strings.Join(users, " "), u) {
			t.Errorf("account %s missing: %v", u, users)
		}
	}
	if len(users) != 3 {
		t.Errorf("accounts %v, want 3 (%s's went)", users, drop.User)
	}

	// Nothing to do a second time.
	before := show(t, a)
	if err := x.Reconcile(ctx, []tgt.Export{keep, add}, owns); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, show(t, a)); diff != "" {
		t.Errorf("second Reconcile changed tgt (-before +after):\n%s", diff)
	}

	dup := []tgt.Export{keep, keep}
	if err := x.Reconcile(ctx, dup, owns); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("Reconcile with an IQN twice = %v, want ErrInvalid", err)
	}
	// Wanting nothing removes everything owned, and only that.
	if err := x.Reconcile(ctx, nil, owns); err != nil {
		t.Fatal(err)
	}
	if targets := show(t, a); len(targets) != 1 || targets[0].IQN != foreignIQN {
		t.Errorf("after Reconcile(nil): %+v; want only the foreign target", targets)
	}
}

func TestRestartThenReconcile(t *testing.T) {
	t.Parallel()
	p := needPrograms(t)
	d := startTgtd(t)
	x := &tgt.Exporter{Admin: d.Admin()}
	ctx := t.Context()
	path, data := backingFile(t, 8<<20, 10)
	e := newExport(t, "snap-restart", path)
	if _, err := x.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	d2, err := tgt.StartDaemon(ctx, d.Portal(), d.ControlPort(), t.Logf)
	if err != nil {
		t.Fatalf("start tgtd again on %s, control port %d: %v", d.Portal(), d.ControlPort(), err)
	}
	track(t, d2)
	if list, err := x.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("a restarted tgtd has %+v, %v; want nothing", list, err)
	}
	if users := accounts(t, d2.Admin()); len(users) != 0 {
		t.Fatalf("a restarted tgtd has accounts %v", users)
	}
	if err := x.Reconcile(ctx, []tgt.Export{e}, func(string) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if out, err := clientFor(p, d2, e).read(ctx, t); err != nil || !bytes.Equal(out, data) {
		t.Errorf("reading the restored export: %d bytes, %v", len(out), err)
	}
}

func TestExportContextCancelled(t *testing.T) {
	t.Parallel()
	needPrograms(t)
	d := startTgtd(t)
	x := &tgt.Exporter{Admin: d.Admin()}
	path, _ := backingFile(t, 1<<20, 11)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := x.Export(ctx, newExport(t, "snap-cancel", path)); err == nil {
		t.Error("Export with a cancelled context succeeded")
	}
	if targets := show(t, d.Admin()); len(targets) != 0 {
		t.Errorf("targets after a cancelled Export: %+v", targets)
	}
}

// TestExportFixesWhatItFinds starts from targets made by hand under the
// export's IQN, as a crashed agent or an operator may leave them, and from
// a fresh Exporter that knows no secrets.
func TestExportFixesWhatItFinds(t *testing.T) {
	t.Parallel()
	p := needPrograms(t)
	d := startTgtd(t)
	a := d.Admin()
	ctx := t.Context()
	path, data := backingFile(t, 4<<20, 12)
	path2, _ := backingFile(t, 1<<20, 13)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// In place: wrong read-only flag, an address and a second name in the
	// ACL, a stray incoming and an outgoing account, a session of the
	// initiator that must lose access.
	e := newExport(t, "snap-messy", path)
	e.ReadOnly = true
	must(a.NewTarget(ctx, 4, e.IQN))
	must(a.AddLUN(ctx, 4, 1, path, false))
	must(a.NewAccount(ctx, "stray", "straysecret1"))
	must(a.NewAccount(ctx, "mutual", "mutualsecret"))
	must(a.BindAccount(ctx, 4, "stray"))
	must(a.BindOutgoingAccount(ctx, 4, "mutual"))
	must(a.BindAddress(ctx, 4, "ALL"))
	must(a.BindInitiator(ctx, 4, initiatorB))
	intruder := client{p: p, portal: d.Portal(), iqn: e.IQN, initiator: initiatorB, user: "stray", secret: "straysecret1"}
	intruder.session(t)
	waitSession(t, a, e.IQN, initiatorB)

	x := &tgt.Exporter{Admin: a}
	got, err := x.Export(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	if got.TID != 4 {
		t.Errorf("Export moved the target to tid %d", got.TID)
	}
	want := tgt.Target{
		TID:        4,
		IQN:        e.IQN,
		LUNs:       []tgt.LUN{{Number: 1, BackingStore: path, SizeBytes: 4_000_000, ReadOnly: true}},
		Initiators: []string{initiatorA},
		Accounts:   []string{e.User},
	}
	if diff := cmp.Diff([]tgt.Target{want}, show(t, a)); diff != "" {
		t.Errorf("after Export (-want +got):\n%s", diff)
	}
	if users := accounts(t, a); !cmp.Equal(users, []string{"mutual", e.User}) && !cmp.Equal(users, []string{e.User, "mutual"}) {
		t.Errorf("accounts %v: want the stray one gone, the outgoing one (unbound) kept", users)
	}
	if err := intruder.inq(ctx); err == nil {
		t.Error("the initiator taken off the ACL still logs in")
	}
	if out, err := clientFor(p, d, e).read(ctx, t); err != nil || !bytes.Equal(out, data) {
		t.Errorf("reading the fixed export: %d bytes, %v", len(out), err)
	}

	// A new Exporter (the agent restarted, tgtd did not) cannot know the
	// secret; it sets it again and keeps the initiator's session.
	c := clientFor(p, d, e)
	c.session(t)
	waitSession(t, a, e.IQN, initiatorA)
	before := show(t, a)[0].Sessions
	x = &tgt.Exporter{Admin: a}
	e.Secret = newSecret(t)
	if _, err := x.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	if after := show(t, a)[0].Sessions; !cmp.Equal(after, before) {
		t.Errorf("sessions %+v became %+v when the secret was set again", before, after)
	}
	if err := c.inq(ctx); err == nil {
		t.Error("the old secret still logs in")
	}
	if err := clientFor(p, d, e).inq(ctx); err != nil {
		t.Errorf("the new secret: %v", err)
	}

	// A second LUN: the target is made again, with LUN 1 only.
	must(a.AddLUN(ctx, 4, 2, path2, false))
	if _, err := x.Export(ctx, e); err != nil {
		t.Fatal(err)
	}
	if targets := show(t, a); len(targets) != 1 || len(targets[0].LUNs) != 1 || targets[0].LUNs[0].BackingStore != path {
		t.Errorf("after Export of a target with two LUNs: %+v", targets)
	}
	if err := clientFor(p, d, e).inq(ctx); err != nil {
		t.Errorf("after re-creating: %v", err)
	}
}
