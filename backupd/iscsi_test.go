package backupd_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/api/backuppb"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
	"github.com/bulkhead-io/bulkhead/internal/tgt"
)

// backupdIQN is the initiator name of the test env's backupd (host node-1).
const backupdIQN = "iqn.2026-11.io.bulkhead:backupd-node-1"

// startTgtd starts a tgtd on a free low port of 127.0.0.1 (one number for
// the portal and the control port) and stops it when the test ends.
func startTgtd(t *testing.T) *tgt.Daemon {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Command(t, "tgtd")
	var last error
	for range 3 {
		port := testenv.FreeLowPort(t)
		d, err := tgt.StartDaemon(t.Context(), fmt.Sprintf("127.0.0.1:%d", port), port, t.Logf)
		if err != nil {
			last = err
			continue
		}
		t.Cleanup(func() {
			if err := d.Stop(context.Background()); err != nil {
				t.Errorf("stop tgtd: %v", err)
			}
		})
		return d
	}
	t.Fatalf("start tgtd: %v", last)
	return nil
}

// export exports path on d for backupd's initiator with fresh CHAP
// credentials and returns the location backupd is given.
func export(t *testing.T, d *tgt.Daemon, x *tgt.Exporter, name, path string, readOnly bool) *backuppb.DataLocation {
	t.Helper()
	secret, err := tgt.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	e, err := x.Export(t.Context(), tgt.Export{IQN: "iqn.2026-11.io.bulkhead:" + name, Path: path, ReadOnly: readOnly,
		Initiator: backupdIQN, User: tgt.NewUser(name), Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	return &backuppb.DataLocation{Location: &backuppb.DataLocation_Iscsi{Iscsi: &backuppb.IscsiTarget{
		Portal: d.Portal(), TargetIqn: e.IQN, Lun: 1, ChapUser: e.User, ChapSecret: e.Secret}}}
}

// noSessions fails unless no initiator is logged in to d's targets.
func noSessions(t *testing.T, d *tgt.Daemon) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		targets, err := d.Admin().Show(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var open []string
		for _, tg := range targets {
			if len(tg.Sessions) > 0 {
				open = append(open, tg.IQN)
			}
		}
		if len(open) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("iSCSI sessions left open (no logout) on %v", open)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestISCSISource backs up a snapshot exported by a real tgtd (another
// node's agent does this for backupd), restores it into a local file and
// into another export, and checks both are byte-equal and that backupd
// logged out every time.
func TestISCSISource(t *testing.T) {
	d := startTgtd(t)
	x := &tgt.Exporter{Admin: d.Admin()}
	e := newEnv(t)

	const size = 40 * bs
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(40, 1))
	for i := range size / bs {
		if i%4 == 1 {
			continue // zero block
		}
		for k := i * bs; k < (i+1)*bs; k++ {
			data[k] = byte(rng.Uint32())
		}
	}
	src := filepath.Join(e.dir, "snap")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	loc := export(t, d, x, "snap-1", src, true)

	if _, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b1", VolumeId: "vol-1", Source: loc}); err != nil {
		t.Fatal(err)
	}
	st := e.wait("b1")
	if st.GetState() != done || st.GetBytesTotal() != size {
		t.Fatalf("backup from iSCSI: %v; want DONE of %d bytes", st, size)
	}
	noSessions(t, d)

	// Into a local file.
	target := filepath.Join(e.dir, "restored")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(target, size); err != nil {
		t.Fatal(err)
	}
	e.startRestore("b1", "vol-1", target)
	if st := e.wait("b1"); st.GetState() != done {
		t.Fatalf("restore: %v", st)
	}
	if got, err := os.ReadFile(target); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restored file differs from the exported snapshot (err %v)", err)
	}

	// Into another export, over iSCSI, with garbage where zeros belong.
	target2 := filepath.Join(e.dir, "restored2")
	garbage := bytes.Repeat([]byte{0xa5}, size)
	if err := os.WriteFile(target2, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	loc2 := export(t, d, x, "vol-2", target2, false)
	if _, err := e.client.StartRestore(t.Context(), &backuppb.StartRestoreRequest{BackupId: "b1", BackupVolumeId: "vol-1",
		VolumeId: "vol-2", Target: loc2}); err != nil {
		t.Fatal(err)
	}
	if st := e.wait("b1"); st.GetState() != done {
		t.Fatalf("restore to iSCSI: %v", st)
	}
	noSessions(t, d)
	if got, err := os.ReadFile(target2); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("volume restored over iSCSI differs from the snapshot (err %v)", err)
	}

	// Wrong CHAP secret: the job fails and says where.
	bad := loc.GetIscsi()
	bad.ChapSecret = "wrong-secret-1"
	if _, err := e.client.StartBackup(t.Context(), &backuppb.StartBackupRequest{BackupId: "b2", VolumeId: "vol-1",
		Source: &backuppb.DataLocation{Location: &backuppb.DataLocation_Iscsi{Iscsi: bad}}}); err != nil {
		t.Fatal(err)
	}
	if st := e.wait("b2"); st.GetState() != failed || !strings.Contains(st.GetFailReason(), "open source") {
		t.Errorf("backup with a wrong CHAP secret: %v", st)
	}
	if strings.Contains(e.status("b2").GetFailReason(), "wrong-secret-1") {
		t.Error("fail_reason shows the CHAP secret")
	}
	noSessions(t, d)
}
