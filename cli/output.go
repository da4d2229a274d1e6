package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bulkhead-io/bulkhead/api/client"
)

// printJSON writes v as indented JSON and a newline.
func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the answer as JSON: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// table writes rows under a header, in aligned columns.
func table(w io.Writer, header []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

// fields writes "key: value" lines, aligned.
func fields(w io.Writer, kv [][2]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, f := range kv {
		fmt.Fprintf(tw, "%s:\t%s\n", f[0], f[1])
	}
	tw.Flush()
}

// dash shows an empty value as "-".
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func gib(n int64) string { return fmt.Sprintf("%d GiB", n) }

func timeStr(t client.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func metadataStr(m map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, k+"="+m[k])
	}
	return dash(strings.Join(parts, ", "))
}

// humanBytes is n in binary units: 0 B, 512 B, 1.5 KiB, 460.8 MiB, 1.0 GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 5 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[i])
}

// humanDuration is d rounded for people: 7s, 1m05s, 2h03m.
func humanDuration(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// Resource views.

func attachedTo(v *client.Volume) string {
	var out []string
	for _, at := range v.Attachments {
		out = append(out, at.ServerID)
	}
	return dash(strings.Join(out, ","))
}

func (a *app) printVolumes(vs []client.Volume) error {
	if a.json() {
		return printJSON(a.stdout, nonNil(vs))
	}
	var rows [][]string
	for i := range vs {
		v := &vs[i]
		rows = append(rows, []string{v.ID, dash(v.Name), gib(v.Size), v.Status, dash(v.BackupStatus), dash(v.Host), attachedTo(v)})
	}
	table(a.stdout, []string{"ID", "NAME", "SIZE", "STATUS", "BACKUP STATUS", "NODE", "ATTACHED TO"}, rows)
	return nil
}

func (a *app) printVolume(v *client.Volume) error {
	if a.json() {
		return printJSON(a.stdout, v)
	}
	kv := [][2]string{
		{"id", v.ID}, {"name", dash(v.Name)}, {"description", dash(v.Description)}, {"size", gib(v.Size)},
		{"status", v.Status}, {"backup_status", dash(v.BackupStatus)}, {"node", dash(v.Host)},
		{"availability_zone", dash(v.AvailabilityZone)}, {"project", dash(v.ProjectID)},
	}
	if v.SnapshotID != "" {
		kv = append(kv, [2]string{"snapshot_id", v.SnapshotID})
	}
	if v.SourceVolID != "" {
		kv = append(kv, [2]string{"source_volid", v.SourceVolID})
	}
	for _, at := range v.Attachments {
		kv = append(kv, [2]string{"attachment", fmt.Sprintf("%s: instance %s, host %s", at.AttachmentID, dash(at.ServerID), dash(at.HostName))})
	}
	kv = append(kv, [2]string{"metadata", metadataStr(v.Metadata)},
		[2]string{"created_at", timeStr(v.CreatedAt)}, [2]string{"updated_at", timeStr(v.UpdatedAt)})
	fields(a.stdout, kv)
	return nil
}

func (a *app) printSnapshots(ss []client.Snapshot) error {
	if a.json() {
		return printJSON(a.stdout, nonNil(ss))
	}
	var rows [][]string
	for i := range ss {
		s := &ss[i]
		rows = append(rows, []string{s.ID, dash(s.Name), s.VolumeID, gib(s.Size), s.Status, timeStr(s.CreatedAt)})
	}
	table(a.stdout, []string{"ID", "NAME", "VOLUME", "SIZE", "STATUS", "CREATED"}, rows)
	return nil
}

func (a *app) printSnapshot(s *client.Snapshot) error {
	if a.json() {
		return printJSON(a.stdout, s)
	}
	fields(a.stdout, [][2]string{
		{"id", s.ID}, {"name", dash(s.Name)}, {"description", dash(s.Description)}, {"volume_id", s.VolumeID},
		{"size", gib(s.Size)}, {"status", s.Status}, {"project", dash(s.ProjectID)}, {"metadata", metadataStr(s.Metadata)},
		{"created_at", timeStr(s.CreatedAt)}, {"updated_at", timeStr(s.UpdatedAt)},
	})
	return nil
}

// backupProgress is "45%" or, while bytes move, "45% (460.8 MiB of 1.0 GiB)".
func backupProgress(b *client.Backup) string {
	if b.BytesTotal > 0 && b.Status == client.BackupCreating {
		return fmt.Sprintf("%d%% (%s of %s)", b.Progress, humanBytes(b.BytesDone), humanBytes(b.BytesTotal))
	}
	return fmt.Sprintf("%d%%", b.Progress)
}

func (a *app) printBackups(bs []client.Backup) error {
	if a.json() {
		return printJSON(a.stdout, nonNil(bs))
	}
	var rows [][]string
	for i := range bs {
		b := &bs[i]
		incr := "full"
		if b.IsIncremental {
			incr = "incremental"
		}
		rows = append(rows, []string{b.ID, dash(b.Name), b.VolumeID, gib(b.Size), b.Status, fmt.Sprintf("%d%%", b.Progress), incr, timeStr(b.CreatedAt)})
	}
	table(a.stdout, []string{"ID", "NAME", "VOLUME", "SIZE", "STATUS", "PROGRESS", "KIND", "CREATED"}, rows)
	return nil
}

func (a *app) printBackup(b *client.Backup) error {
	if a.json() {
		return printJSON(a.stdout, b)
	}
	kind := "full"
	if b.IsIncremental {
		kind = "incremental"
	}
	kv := [][2]string{
		{"id", b.ID}, {"name", dash(b.Name)}, {"description", dash(b.Description)}, {"volume_id", b.VolumeID},
		{"snapshot_id", dash(b.SnapshotID)}, {"size", gib(b.Size)}, {"status", b.Status},
		{"fail_reason", dash(b.FailReason)}, {"progress", backupProgress(b)}, {"kind", kind},
		{"has_dependent_backups", fmt.Sprint(b.HasDependentBackups)}, {"container", dash(b.Container)},
		{"object_count", fmt.Sprint(b.ObjectCount)}, {"metadata", metadataStr(b.Metadata)},
		{"data_timestamp", timeStr(b.DataTimestamp)}, {"created_at", timeStr(b.CreatedAt)}, {"updated_at", timeStr(b.UpdatedAt)},
	}
	fields(a.stdout, kv)
	return nil
}

func (a *app) printServices(ss []client.Service) error {
	if a.json() {
		return printJSON(a.stdout, nonNil(ss))
	}
	var rows [][]string
	for _, s := range ss {
		rows = append(rows, []string{s.Host, s.Binary, dash(s.Zone), s.Status, s.State, timeStr(s.UpdatedAt), dash(s.DisabledReason)})
	}
	table(a.stdout, []string{"HOST", "BINARY", "ZONE", "STATUS", "STATE", "LAST HEARTBEAT", "DISABLED REASON"}, rows)
	return nil
}

func (a *app) printAttachment(at *client.Attachment) error {
	if a.json() {
		return printJSON(a.stdout, at)
	}
	fields(a.stdout, [][2]string{
		{"attachment", at.ID}, {"volume_id", at.VolumeID}, {"instance", dash(at.Instance)}, {"status", at.Status},
		{"mode", dash(at.AttachMode)}, {"connection", connectionStr(at.ConnectionInfo)}, {"attached_at", timeStr(at.AttachedAt)},
	})
	return nil
}

// connectionStr sums up connection_info: "local", or the iSCSI target to
// log in to (the CHAP secret only with -o json).
func connectionStr(ci map[string]any) string {
	kind, _ := ci["driver_volume_type"].(string)
	if kind != "iscsi" {
		return dash(kind)
	}
	data, _ := ci["data"].(map[string]any)
	return fmt.Sprintf("iscsi: portal %v, target %v, lun %v, CHAP user %v (the secret is in -o json)",
		data["target_portal"], data["target_iqn"], data["target_lun"], data["auth_username"])
}

// nonNil makes an empty listing print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
