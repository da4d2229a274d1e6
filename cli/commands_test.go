package cli

import (
	"context"
	"io"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/api/client"
)

// The commands against a real controller (internal/teststack) with fake
// agents and no backup daemon.

func TestVolumeCommands(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()

	// create --wait, as JSON and as a table.
	var v client.Volume
	e.okJSON(t, &v, "volume", "create", "--size", "2G", "--name", "data", "--description", "d", "--wait")
	if v.ID == "" || v.Name != "data" || v.Size != 2 || v.Status != client.VolumeAvailable || v.Description != "d" {
		t.Fatalf("volume create -o json: %+v", v)
	}
	out := e.ok(t, "volume", "create", "--size", "1", "--name", "other", "--node", "node-2", "--wait")
	if !regexp.MustCompile(`(?m)^status: +available$`).MatchString(out) || !regexp.MustCompile(`(?m)^node: +node-2$`).MatchString(out) {
		t.Errorf("volume create table: want status available on node-2:\n%s", out)
	}
	// Without --wait the volume is shown as the controller took it.
	var quick client.Volume
	e.okJSON(t, &quick, "volume", "create", "--size", "1")
	if quick.Status != client.VolumeCreating {
		t.Errorf("volume create without --wait: status %s, want creating", quick.Status)
	}

	// list: table and JSON, with filters.
	out = e.ok(t, "volume", "list")
	if !strings.HasPrefix(out, "ID ") || !strings.Contains(out, "BACKUP STATUS") || !regexp.MustCompile(`(?m)^`+v.ID+` +data +2 GiB +available +- +node-\d +-$`).MatchString(out) {
		t.Errorf("volume list table:\n%s", out)
	}
	var vs []client.Volume
	e.okJSON(t, &vs, "volume", "list", "--name", "data")
	if len(vs) != 1 || vs[0].ID != v.ID {
		t.Errorf("volume list --name data -o json: %+v", vs)
	}
	e.okJSON(t, &vs, "volume", "list", "--name", "nothing")
	if len(vs) != 0 {
		t.Errorf("volume list --name nothing: %+v", vs)
	}
	if out := e.ok(t, "volume", "list", "--name", "nothing", "-o", "json"); out != "[]\n" {
		t.Errorf("an empty list in JSON is %q, want []", out)
	}
	e.okJSON(t, &vs, "volume", "list", "--all-projects", "--status", "available")
	if len(vs) < 2 {
		t.Errorf("volume list --all-projects --status available: %d volumes", len(vs))
	}

	// show by id and by name; the global flags also go first.
	var shown client.Volume
	e.okJSON(t, &shown, "-o", "json", "volume", "show", "data")
	if shown.ID != v.ID {
		t.Errorf("volume show data: %s, want %s", shown.ID, v.ID)
	}
	out = e.ok(t, "volume", "show", v.ID)
	for _, want := range []string{"id:", v.ID, "size:", "2 GiB", "backup_status:", "created_at:"} {
		if !strings.Contains(out, want) {
			t.Errorf("volume show lacks %q:\n%s", want, out)
		}
	}

	// Unknown: exit 3 with the controller's words.
	_, err := e.api.GetVolume(ctx, "no-such-volume")
	msg := apiMessage(t, err)
	e.fails(t, ExitNotFound, []string{msg, "HTTP 404"}, "volume", "show", "no-such-volume")
	e.fails(t, ExitNotFound, []string{msg}, "volume", "delete", "no-such-volume")
	e.fails(t, ExitNotFound, []string{msg}, "volume", "extend", "no-such-volume", "5")
	e.fails(t, ExitNotFound, []string{msg}, "snapshot", "create", "no-such-volume")
	e.fails(t, ExitNotFound, []string{msg}, "backup", "create", "no-such-volume")

	// A name two volumes share is ambiguous.
	e.ok(t, "volume", "create", "--size", "1", "--name", "twin")
	e.ok(t, "volume", "create", "--size", "1", "--name", "twin")
	e.fails(t, ExitUsage, []string{`2 volumes are named "twin"`, "by its id"}, "volume", "show", "twin")

	// extend --wait.
	e.okJSON(t, &v, "volume", "extend", "data", "3", "--wait")
	if v.Size != 3 || v.Status != client.VolumeAvailable {
		t.Errorf("after extend --wait: %d GiB %s", v.Size, v.Status)
	}
	// The controller refuses to shrink: exit 1 with its message.
	r := e.fails(t, ExitFailed, []string{"HTTP 400"}, "volume", "extend", "data", "1")
	if !strings.Contains(r.stderr, "extend volume "+v.ID) {
		t.Errorf("the error should say what failed:\n%s", r.stderr)
	}

	// Clones from a snapshot and from a volume, by name.
	e.ok(t, "snapshot", "create", "data", "--name", "snap", "--wait")
	var fromSnap, fromVol client.Volume
	e.okJSON(t, &fromSnap, "volume", "create", "--snapshot", "snap", "--name", "from-snap", "--wait")
	e.okJSON(t, &fromVol, "volume", "create", "--source-volume", "data", "--name", "from-vol", "--wait")
	if fromSnap.Size != 3 || fromSnap.SnapshotID == "" || fromVol.SourceVolID != v.ID || fromVol.Size != 3 {
		t.Errorf("clones: from snapshot %+v, from volume %+v", fromSnap, fromVol)
	}

	// delete --wait: gone.
	out = e.ok(t, "volume", "delete", "from-vol", "--wait")
	if out != "volume "+fromVol.ID+" deleted\n" {
		t.Errorf("volume delete --wait: %q", out)
	}
	if _, err := e.api.GetVolume(ctx, fromVol.ID); !client.IsNotFound(err) {
		t.Errorf("after volume delete --wait: %v", err)
	}
	if out := e.ok(t, "volume", "delete", fromSnap.ID, "-o", "json"); out != "" {
		t.Errorf("volume delete -o json printed %q", out)
	}
	// A volume with snapshots is refused: exit 1 with the reason.
	e.fails(t, ExitFailed, []string{"delete volume " + v.ID, "HTTP 400"}, "volume", "delete", "data")
}

func TestAuthFailure(t *testing.T) {
	e := startEnv(t)
	e.fails(t, ExitAuth, []string{"USER:PROJECT", "HTTP 401", "Check the token"}, "volume", "list", "--token", "no-colon")
}

func TestSnapshotCommands(t *testing.T) {
	e := startEnv(t)
	v := e.volume(t, client.CreateVolumeRequest{Name: "data", SizeGiB: 1})

	var s client.Snapshot
	e.okJSON(t, &s, "snapshot", "create", "data", "--name", "s1", "--wait")
	if s.Status != client.SnapshotAvailable || s.VolumeID != v.ID || s.Name != "s1" {
		t.Fatalf("snapshot create: %+v", s)
	}
	out := e.ok(t, "snapshot", "create", v.ID, "--name", "s2")
	if !regexp.MustCompile(`(?m)^status: +(creating|available)$`).MatchString(out) {
		t.Errorf("snapshot create table:\n%s", out)
	}
	out = e.ok(t, "snapshot", "list", "--volume", "data")
	if !strings.HasPrefix(out, "ID ") || !strings.Contains(out, s.ID) || !strings.Contains(out, " s2 ") {
		t.Errorf("snapshot list:\n%s", out)
	}
	var ss []client.Snapshot
	e.okJSON(t, &ss, "snapshot", "list")
	if len(ss) != 2 {
		t.Errorf("snapshot list -o json: %d snapshots", len(ss))
	}
	var shown client.Snapshot
	e.okJSON(t, &shown, "snapshot", "show", "s1")
	if shown.ID != s.ID {
		t.Errorf("snapshot show s1: %+v", shown)
	}
	if out := e.ok(t, "snapshot", "show", s.ID); !strings.Contains(out, "volume_id:") || !strings.Contains(out, v.ID) {
		t.Errorf("snapshot show table:\n%s", out)
	}

	// An in-use volume needs --force.
	e.ok(t, "volume", "attach", "data", "--instance", "vm-1")
	e.fails(t, ExitFailed, []string{"snapshot volume " + v.ID, "HTTP 400"}, "snapshot", "create", "data")
	e.ok(t, "snapshot", "create", "data", "--force", "--name", "s3", "--wait")

	_, err := e.api.GetSnapshot(context.Background(), "no-such-snapshot")
	e.fails(t, ExitNotFound, []string{apiMessage(t, err)}, "snapshot", "show", "no-such-snapshot")
	e.fails(t, ExitNotFound, []string{apiMessage(t, err)}, "snapshot", "delete", "no-such-snapshot")

	for _, name := range []string{"s1", "s2", "s3"} {
		if out := e.ok(t, "snapshot", "delete", name, "--wait"); !strings.HasSuffix(out, " deleted\n") {
			t.Errorf("snapshot delete %s --wait: %q", name, out)
		}
	}
	if ss, err := e.api.ListSnapshots(context.Background(), url.Values{}); err != nil || len(ss) != 0 {
		t.Errorf("snapshots left: %v %v", ss, err)
	}
}

// TestBackupCommands: there is no backup daemon here, so backups end in
// error, which --wait reports with exit 1 and the reason.
func TestBackupCommands(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	v := e.volume(t, client.CreateVolumeRequest{Name: "data", SizeGiB: 1})

	r := e.fails(t, ExitFailed, []string{"ended in status error", "no backup daemon"}, "backup", "create", "data", "--name", "b1", "--wait")
	progress := regexp.MustCompile(`(?m)^backup [0-9a-f]{8}: (creating|error)`)
	if !progress.MatchString(r.stdout) || !strings.Contains(r.stdout, "fail_reason:") || strings.Contains(r.stdout, "\r") {
		t.Errorf("backup create --wait off a terminal: want progress lines and the backup:\n%s", r.stdout)
	}
	bs, err := e.api.ListBackups(ctx, url.Values{"name": {"b1"}})
	if err != nil || len(bs) != 1 {
		t.Fatalf("backups named b1: %v %v", bs, err)
	}
	b1 := bs[0]

	// With -o json the progress goes to standard error, the backup alone
	// to standard output.
	r = e.fails(t, ExitFailed, []string{"backup ", "no backup daemon"}, "backup", "create", v.ID, "--name", "b2", "--wait", "-o", "json")
	if !strings.HasPrefix(r.stdout, "{") || !progress.MatchString(r.stderr) {
		t.Errorf("backup create --wait -o json:\n%s\n%s", r.stdout, r.stderr)
	}

	// On a terminal, a bar drawn in place, ended by a newline.
	onTTY := func(a *app) {
		a.isTerminal = func(w io.Writer) bool { return w == a.stdout }
		a.termWidth = func(io.Writer) int { return 100 }
	}
	r = cliWith(t, context.Background(), e.url, onTTY, "backup", "create", "data", "--name", "b-tty", "--wait")
	if r.code != ExitFailed || !regexp.MustCompile(`^\rbackup [0-9a-f]{8}.*\x1b\[K`).MatchString(r.stdout) ||
		!regexp.MustCompile(`\rbackup [0-9a-f]{8}: error after 0s\x1b\[K\nid: `).MatchString(r.stdout) {
		t.Errorf("backup create --wait on a terminal: exit %d\n%q", r.code, r.stdout)
	}

	// Without --wait: accepted, exit 0.
	var b3 client.Backup
	e.okJSON(t, &b3, "backup", "create", "data", "--name", "b3", "--incremental=false")
	if b3.ID == "" || b3.VolumeID != v.ID || b3.Name != "b3" {
		t.Errorf("backup create -o json: %+v", b3)
	}
	if _, err := e.api.WaitBackup(ctx, b3.ID, func(b *client.Backup) bool { return b.Status != client.BackupCreating }); err != nil {
		t.Fatal(err)
	}
	// An in-use volume needs --force; --incremental needs a backup to
	// build on. The controller says so.
	e.ok(t, "volume", "attach", "data", "--instance", "vm-1")
	e.fails(t, ExitFailed, []string{"HTTP 400"}, "backup", "create", "data")
	e.fails(t, ExitFailed, []string{"HTTP 400"}, "backup", "create", "data", "--force", "--incremental")
	e.ok(t, "volume", "detach", "data")

	out := e.ok(t, "backup", "list")
	if !strings.HasPrefix(out, "ID ") || !strings.Contains(out, b1.ID) || !regexp.MustCompile(` b1 +`+v.ID+` +1 GiB +error +0% +full`).MatchString(out) {
		t.Errorf("backup list:\n%s", out)
	}
	var list []client.Backup
	e.okJSON(t, &list, "backup", "list", "--volume", "data", "--status", "error")
	if len(list) != 4 {
		t.Errorf("backup list --volume data --status error: %d backups", len(list))
	}
	var shown client.Backup
	e.okJSON(t, &shown, "backup", "show", "b1")
	if shown.ID != b1.ID || shown.Status != client.BackupError || !strings.Contains(shown.FailReason, "backup daemon") {
		t.Errorf("backup show b1 -o json: %+v", shown)
	}
	if out := e.ok(t, "backup", "show", b1.ID); !strings.Contains(out, "progress:") || !strings.Contains(out, "no backup daemon") {
		t.Errorf("backup show table:\n%s", out)
	}
	_, err = e.api.GetBackup(ctx, "no-such-backup")
	e.fails(t, ExitNotFound, []string{apiMessage(t, err)}, "backup", "show", "no-such-backup")
	e.fails(t, ExitNotFound, []string{apiMessage(t, err)}, "backup", "restore", "no-such-backup", "--wait")

	// A backup in error does not restore.
	e.fails(t, ExitFailed, []string{"restore backup " + b1.ID, "HTTP 400"}, "backup", "restore", "b1")
	// Made available by hand, it restores, and the restore fails: no
	// backup daemon on the volume's node.
	e.post(t, "/backups/"+b1.ID+"/action", `{"os-reset_status": {"status": "available"}}`)
	r = e.fails(t, ExitFailed, []string{"restoring backup " + b1.ID, "error_restoring", "restore failed"}, "backup", "restore", "b1", "--name", "restored", "--wait")
	if !regexp.MustCompile(`(?m)^restore [0-9a-f]{8}: failed after`).MatchString(r.stdout) {
		t.Errorf("backup restore --wait: want its last progress line:\n%s", r.stdout)
	}
	var rs client.Restore
	e.okJSON(t, &rs, "backup", "restore", b1.ID, "--volume", "data")
	if rs.BackupID != b1.ID || rs.VolumeID != v.ID {
		t.Errorf("backup restore --volume -o json: %+v", rs)
	}
	if _, err := e.api.WaitBackup(ctx, b1.ID, func(b *client.Backup) bool { return b.Status != client.BackupRestoring }); err != nil {
		t.Fatal(err)
	}

	for _, b := range []string{"b1", "b2", "b-tty", b3.ID} {
		if out := e.ok(t, "backup", "delete", b, "--wait"); !strings.HasSuffix(out, " deleted\n") {
			t.Errorf("backup delete %s --wait: %q", b, out)
		}
	}
	if bs, err := e.api.ListBackups(ctx, nil); err != nil || len(bs) != 0 {
		t.Errorf("backups left: %v %v", bs, err)
	}
}

// TestAttachDetach: attachments without --mount, local to the volume's
// node (this machine's host name, node-1) or over iSCSI from another host.
func TestAttachDetach(t *testing.T) {
	e := startEnv(t)
	ctx := context.Background()
	v := e.volume(t, client.CreateVolumeRequest{Name: "data", SizeGiB: 1, Topology: map[string]string{"topology.bulkhead.io/node": "node-1"}})

	out := e.ok(t, "volume", "attach", "data", "--instance", "vm-1")
	for _, re := range []string{`(?m)^status: +attached$`, `(?m)^connection: +local$`, `(?m)^instance: +vm-1$`, `(?m)^mode: +rw$`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("volume attach: want %s:\n%s", re, out)
		}
	}
	got, err := e.api.GetVolume(ctx, v.ID)
	if err != nil || got.Status != client.VolumeInUse || len(got.Attachments) != 1 || got.Attachments[0].HostName != "node-1" {
		t.Fatalf("after attach: %+v %v", got, err)
	}
	e.fails(t, ExitNotFound, []string{"not attached to instance vm-2"}, "volume", "detach", "data", "--instance", "vm-2")
	out = e.ok(t, "volume", "detach", "data", "--instance", "vm-1")
	if !strings.HasPrefix(out, "volume "+v.ID+" detached from instance vm-1") {
		t.Errorf("volume detach: %q", out)
	}
	if got, _ := e.api.GetVolume(ctx, v.ID); got.Status != client.VolumeAvailable {
		t.Errorf("after detach: %s", got.Status)
	}
	e.fails(t, ExitNotFound, []string{"has no attachment"}, "volume", "detach", "data")

	// From another host the controller wants an initiator, and says so.
	e.fails(t, ExitFailed, []string{"initiator", "HTTP 400"}, "volume", "attach", "data", "--instance", "vm-2", "--host", "elsewhere")
	var at client.Attachment
	e.okJSON(t, &at, "volume", "attach", "data", "--instance", "vm-2", "--host", "elsewhere",
		"--initiator", "iqn.2026-11.io.example:elsewhere", "--read-only")
	if at.Status != client.AttachmentAttached || at.AttachMode != "ro" || at.ConnectionInfo["driver_volume_type"] != "iscsi" {
		t.Errorf("iSCSI attach -o json: %+v", at)
	}
	if len(e.node1.Exports()) != 1 {
		t.Errorf("node-1 exports: %+v", e.node1.Exports())
	}
	var det map[string]string
	e.okJSON(t, &det, "volume", "detach", v.ID)
	if det["attachment_id"] != at.ID || det["instance"] != "vm-2" {
		t.Errorf("volume detach -o json: %v", det)
	}
	if len(e.node1.Exports()) != 0 {
		t.Errorf("node-1 exports after detach: %+v", e.node1.Exports())
	}
	_, err = e.api.GetVolume(ctx, "no-such-volume")
	e.fails(t, ExitNotFound, []string{apiMessage(t, err)}, "volume", "attach", "no-such-volume", "--instance", "vm-1")
}

func TestNodeList(t *testing.T) {
	e := startEnv(t)
	out := e.ok(t, "node", "list")
	for _, node := range []string{"node-1", "node-2"} {
		if !regexp.MustCompile(`(?m)^` + node + ` +bulkhead-agent +\S+ +enabled +up +\d{4}-`).MatchString(out) {
			t.Errorf("node list lacks %s up:\n%s", node, out)
		}
	}
	var ss []client.Service
	e.okJSON(t, &ss, "node", "list", "--host", "node-2", "--binary", "bulkhead-agent")
	if len(ss) != 1 || ss[0].Host != "node-2" || !ss[0].Up() {
		t.Errorf("node list --host node-2 -o json: %+v", ss)
	}
	e.okJSON(t, &ss, "node", "list", "--binary", "bulkhead-backupd")
	if len(ss) != 0 {
		t.Errorf("backup daemons: %+v", ss)
	}
}

// TestInterrupted: a --wait that is interrupted exits 130 and says that
// the work goes on.
func TestInterrupted(t *testing.T) {
	e := startEnv(t)
	release := e.node1.Block("CreateVolume")
	defer release()
	release2 := e.node2.Block("CreateVolume")
	defer release2()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for e.node1.Held("CreateVolume")+e.node2.Held("CreateVolume") == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
	}()
	r := cliCtx(t, ctx, e.url, "volume", "create", "--size", "1", "--name", "slow", "--wait")
	if r.code != ExitInterrupted || !strings.Contains(r.stderr, "stopped waiting for volume") || !strings.Contains(r.stderr, "which goes on: see 'bulkhead volume show") {
		t.Errorf("interrupted volume create --wait: exit %d\n%s", r.code, r.stderr)
	}
	if vs, err := e.api.ListVolumes(context.Background(), url.Values{"name": {"slow"}}); err != nil || len(vs) != 1 || vs[0].Status != client.VolumeCreating {
		t.Errorf("the volume should still be creating: %+v %v", vs, err)
	}
}
