package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// mergedStatusSQL is the single status shown to clients older than 3.72.
var mergedStatusSQL = "(CASE WHEN COALESCE(" + effBackupSQL + ", '') IN ('" +
	strings.Join(model.LegacyMergedBackupStatuses, "','") + "') THEN " + effBackupSQL + " ELSE " + effStatusSQL + " END)"

const volumeCols = "volumes.id, volumes.project_id, volumes.user_id, volumes.name, volumes.description, volumes.size_gib, %s, " +
	"COALESCE(%s, ''), COALESCE(volumes.migration_status, ''), COALESCE(volumes.previous_status, ''), volumes.host, " +
	"volumes.availability_zone, volumes.volume_type, volumes.multiattach, volumes.bootable, volumes.metadata, " +
	"volumes.snapshot_id, volumes.source_volid, volumes.topology, volumes.version, volumes.created_at, volumes.updated_at, " +
	"volumes.provider_auth"

var volumeSelect = "SELECT " + fmt.Sprintf(volumeCols, effStatusSQL, effBackupSQL) + " FROM volumes"

func scanVolume(sc scanner) (*model.Volume, error) {
	v := &model.Volume{}
	var multi, boot int
	var meta, topo, created, updated string
	err := sc.Scan(&v.ID, &v.ProjectID, &v.UserID, &v.Name, &v.Description, &v.SizeGiB, &v.Status, &v.BackupStatus,
		&v.MigrationStatus, &v.PreviousStatus, &v.Node, &v.AvailabilityZone, &v.VolumeType, &multi, &boot, &meta,
		&v.SnapshotID, &v.SourceVolID, &topo, &v.Version, &created, &updated, &v.ProviderAuth)
	if err != nil {
		return nil, err
	}
	v.Multiattach, v.Bootable = multi != 0, boot != 0
	v.CreatedAt, v.UpdatedAt = parseTime(created), parseTime(updated)
	_ = json.Unmarshal([]byte(meta), &v.Metadata)
	_ = json.Unmarshal([]byte(topo), &v.Topology)
	return v, nil
}

func jsonText(v any) string {
	b, err := json.Marshal(v)
	if err != nil || string(b) == "null" {
		return "{}"
	}
	return string(b)
}

// CreateVolume inserts v (status creating unless set). ID and ProjectID
// must be set; CreatedAt/UpdatedAt/Version are filled in.
func (s *Store) CreateVolume(ctx context.Context, v *model.Volume) error {
	return s.createVolume(ctx, s.db, v)
}

// CreateRestoreVolume inserts v as the target of a restore of backup
// backupID and marks the backup restoring into it, in one transaction:
// both happen or neither. The backup must be available.
func (s *Store) CreateRestoreVolume(ctx context.Context, backupID string, v *model.Volume) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if err := s.casRowTx(ctx, tx, "backups", "backup", backupID, []string{model.BkAvailable},
			"status = ?, restore_volume_id = ?", []any{model.BkRestoring, v.ID}); err != nil {
			return err
		}
		return s.createVolume(ctx, tx, v)
	})
}

func (s *Store) createVolume(ctx context.Context, q querier, v *model.Volume) error {
	if v.Status == "" {
		v.Status = model.StatusCreating
	}
	now := s.now()
	v.CreatedAt, v.UpdatedAt, v.Version = now, now, 1
	if v.AvailabilityZone == "" {
		v.AvailabilityZone = "nova"
	}
	_, err := q.ExecContext(ctx, s.q(`INSERT INTO volumes (id, project_id, user_id, name, description, size_gib, status,
		backup_status, migration_status, host, availability_zone, volume_type, multiattach, bootable, metadata, snapshot_id,
		source_volid, topology, version, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`),
		v.ID, v.ProjectID, v.UserID, v.Name, v.Description, v.SizeGiB, v.Status, nullIfEmpty(v.BackupStatus),
		nullIfEmpty(v.MigrationStatus), v.Node, v.AvailabilityZone, v.VolumeType, b2i(v.Multiattach), b2i(v.Bootable),
		jsonText(v.Metadata), v.SnapshotID, v.SourceVolID, jsonText(v.Topology), v.Version, fmtTime(now), fmtTime(now))
	if isUniqueViolation(err) {
		return fmt.Errorf("%w: volume %s exists already", errdefs.ErrConflict, v.ID)
	}
	return err
}

// GetVolume returns volume id with its attachments, or ErrNotFound.
func (s *Store) GetVolume(ctx context.Context, id string) (*model.Volume, error) {
	v, err := scanVolume(s.db.QueryRowContext(ctx, s.q(volumeSelect+" WHERE volumes.id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: volume %s could not be found", errdefs.ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read volume %s: %w", id, err)
	}
	if err := s.loadAttachments(ctx, []*model.Volume{v}); err != nil {
		return nil, err
	}
	return v, nil
}

// SortKey orders a listing.
type SortKey struct {
	Key  string // id, name, size, status, backup_status, created_at, updated_at
	Desc bool
}

// VolumeFilter selects volumes for ListVolumes and CountVolumes.
type VolumeFilter struct {
	ProjectID    string // "" = every project
	Node         string // "" = every node
	Name         string
	Status       string
	BackupStatus string
	// Legacy makes Status filter and sort by the merged status that
	// clients older than 3.72 see.
	Legacy bool
	Limit  int    // 0 = no limit
	Marker string // id of the last volume of the previous page
	Sort   []SortKey
}

// sortExpr maps a sort key to its SQL expression.
func sortExpr(key string, legacy bool) (string, bool) {
	switch key {
	case "id":
		return "volumes.id", true
	case "name":
		return "volumes.name", true
	case "size":
		return "volumes.size_gib", true
	case "created_at":
		return "volumes.created_at", true
	case "updated_at":
		return "volumes.updated_at", true
	case "status":
		if legacy {
			return mergedStatusSQL, true
		}
		return effStatusSQL, true
	case "backup_status":
		return "COALESCE(" + effBackupSQL + ", '')", true
	}
	return "", false
}

// SortKeys lists the keys ListVolumes accepts.
var SortKeys = []string{"id", "name", "size", "status", "backup_status", "created_at", "updated_at"}

func (f VolumeFilter) where() (string, []any) {
	var conds []string
	var args []any
	add := func(cond string, arg any) { conds = append(conds, cond); args = append(args, arg) }
	if f.ProjectID != "" {
		add("volumes.project_id = ?", f.ProjectID)
	}
	if f.Node != "" {
		add("volumes.host = ?", f.Node)
	}
	if f.Name != "" {
		add("volumes.name = ?", f.Name)
	}
	if f.Status != "" {
		if f.Legacy {
			add(mergedStatusSQL+" = ?", f.Status)
		} else {
			add(effStatusSQL+" = ?", f.Status)
		}
	}
	if f.BackupStatus != "" {
		add("COALESCE("+effBackupSQL+", '') = ?", f.BackupStatus)
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// ListVolumes returns the volumes matching f, ordered by f.Sort (default:
// created_at descending), then id, starting after f.Marker.
func (s *Store) ListVolumes(ctx context.Context, f VolumeFilter) ([]*model.Volume, error) {
	keys := append([]SortKey(nil), f.Sort...)
	if len(keys) == 0 {
		keys = []SortKey{{Key: "created_at", Desc: true}}
	}
	if keys[len(keys)-1].Key != "id" {
		keys = append(keys, SortKey{Key: "id", Desc: keys[len(keys)-1].Desc})
	}
	exprs := make([]string, len(keys))
	order := make([]string, len(keys))
	for i, k := range keys {
		e, ok := sortExpr(k.Key, f.Legacy)
		if !ok {
			return nil, fmt.Errorf("%w: sort key %q: want one of %s", errdefs.ErrInvalid, k.Key, strings.Join(SortKeys, ", "))
		}
		exprs[i] = e
		order[i] = e + map[bool]string{false: " ASC", true: " DESC"}[k.Desc]
	}
	where, args := f.where()
	if f.Marker != "" {
		// Keyset pagination: rows strictly after the marker in sort order.
		markerVals := make([]any, len(exprs))
		ptrs := make([]any, len(exprs))
		for i := range markerVals {
			ptrs[i] = &markerVals[i]
		}
		err := s.db.QueryRowContext(ctx, s.q("SELECT "+strings.Join(exprs, ", ")+" FROM volumes WHERE volumes.id = ?"), f.Marker).Scan(ptrs...)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("%w: marker %s could not be found", errdefs.ErrInvalid, f.Marker)
		}
		if err != nil {
			return nil, err
		}
		var ors []string
		for i := range exprs {
			var and []string
			for j := 0; j < i; j++ {
				and = append(and, exprs[j]+" = ?")
				args = append(args, markerVals[j])
			}
			op := " > ?"
			if keys[i].Desc {
				op = " < ?"
			}
			and = append(and, exprs[i]+op)
			args = append(args, markerVals[i])
			ors = append(ors, "("+strings.Join(and, " AND ")+")")
		}
		cond := "(" + strings.Join(ors, " OR ") + ")"
		if where == "" {
			where = " WHERE " + cond
		} else {
			where += " AND " + cond
		}
	}
	query := volumeSelect + where + " ORDER BY " + strings.Join(order, ", ")
	if f.Limit > 0 {
		query += " LIMIT ?"
		args = append(args, f.Limit)
	}
	vols, err := queryAll(ctx, s.db, scanVolume, s.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("list volumes: %w", err)
	}
	return vols, s.loadAttachments(ctx, vols)
}

// CountVolumes counts the volumes matching f, ignoring Limit and Marker.
func (s *Store) CountVolumes(ctx context.Context, f VolumeFilter) (int, error) {
	where, args := f.where()
	var n int
	err := s.db.QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM volumes"+where), args...).Scan(&n)
	return n, err
}

// UpdateVolumeInfo changes the user-editable fields; nil leaves a field.
func (s *Store) UpdateVolumeInfo(ctx context.Context, id string, name, description *string, metadata map[string]string) error {
	sets := []string{"updated_at = ?"}
	args := []any{fmtTime(s.now())}
	if name != nil {
		sets, args = append(sets, "name = ?"), append(args, *name)
	}
	if description != nil {
		sets, args = append(sets, "description = ?"), append(args, *description)
	}
	if metadata != nil {
		sets, args = append(sets, "metadata = ?"), append(args, jsonText(metadata))
	}
	res, err := s.db.ExecContext(ctx, s.q("UPDATE volumes SET "+strings.Join(sets, ", ")+" WHERE id = ?"), append(args, id)...)
	return affectedOne(res, err, "volume", id)
}

// SetVolumeNode records the node a creating volume was scheduled to.
func (s *Store) SetVolumeNode(ctx context.Context, id, node string) error {
	res, err := s.db.ExecContext(ctx, s.q("UPDATE volumes SET host = ?, updated_at = ? WHERE id = ?"), node, fmtTime(s.now()), id)
	return affectedOne(res, err, "volume", id)
}

// RemoveVolume deletes the row of a volume in status deleting, with its
// hidden snapshots. Removing a missing volume succeeds.
func (s *Store) RemoveVolume(ctx context.Context, id string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q("DELETE FROM volumes WHERE id = ? AND status = ?"), id, model.StatusDeleting)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			var status string
			err := tx.QueryRowContext(ctx, s.q("SELECT status FROM volumes WHERE id = ?"), id).Scan(&status)
			if errors.Is(err, sql.ErrNoRows) {
				return nil
			}
			return fmt.Errorf("%w: cannot remove volume %s in status %s", errdefs.ErrInvalid, id, status)
		}
		_, err = tx.ExecContext(ctx, s.q("DELETE FROM snapshots WHERE volume_id = ? AND hidden = 1"), id)
		return err
	})
}

// VolumeIDsInStatus lists volumes whose effective status is one of statuses;
// the reconciler uses it to find work left in transitional states.
func (s *Store) VolumeIDsInStatus(ctx context.Context, statuses ...string) ([]string, error) {
	return queryAll(ctx, s.db, scanString, s.q("SELECT volumes.id FROM volumes WHERE "+effStatusSQL+" IN ("+placeholders(len(statuses))+") ORDER BY volumes.id"), strArgs(statuses)...)
}

// StatusCount is one row of VolumeStatusCounts.
type StatusCount struct {
	Status, BackupStatus string
	Count                int
}

// VolumeStatusCounts counts volumes by effective status and backup_status.
func (s *Store) VolumeStatusCounts(ctx context.Context) ([]StatusCount, error) {
	return queryAll(ctx, s.db, func(sc scanner) (c StatusCount, err error) {
		err = sc.Scan(&c.Status, &c.BackupStatus, &c.Count)
		return c, err
	}, "SELECT st, bs, COUNT(*) FROM (SELECT "+effStatusSQL+" AS st, COALESCE("+effBackupSQL+", '') AS bs FROM volumes) v GROUP BY st, bs ORDER BY st, bs")
}

func affectedOne(res sql.Result, err error, kind, id string) error {
	if err != nil {
		return fmt.Errorf("update %s %s: %w", kind, id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s %s could not be found", errdefs.ErrNotFound, kind, id)
	}
	return nil
}

// SetVolumeProviderAuth records (or, with "", clears) the iSCSI export of
// volume id to a backup daemon writing a restore into it (an ExportAuth).
// It is not a state change: the version is not bumped.
func (s *Store) SetVolumeProviderAuth(ctx context.Context, id, auth string) error {
	res, err := s.db.ExecContext(ctx, s.q("UPDATE volumes SET provider_auth = ?, updated_at = ? WHERE id = ?"),
		auth, fmtTime(s.now()), id)
	return affectedOne(res, err, "volume", id)
}
