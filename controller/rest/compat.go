package rest

import (
	"slices"

	"github.com/bulkhead-io/bulkhead/controller/model"
)

// The 3.72 translation layer (DESIGN §4). This file is the only place that
// knows how clients on either side of microversion 3.72 see a volume's two
// status fields.
//
// From 3.72 a volume has two fields on the wire, as in the store: status
// (what the volume is doing) and backup_status (what backup work is doing
// to it; JSON null when none). backup_status is a list filter and a sort
// key, and os-set_backup_status / os-unset_backup_status set it.
// os-reset_status only sets status, and rejects backup values with a
// pointer to os-set_backup_status.
//
// Below 3.72 clients know one status, in which Cinder kept the backup
// values. They see model.MergedStatus: backing-up, restoring-backup or
// error_restoring when backup_status holds one of them, else the real
// status (error_backing-up is not shown: the volume itself is fine). There
// is no backup_status key; the status filter and sort=status use the same
// merged value (store.VolumeFilter.Legacy); and os-reset_status to a
// backup value sets backup_status, while any other value sets status and
// clears backup_status (model.ResetStatusLegacy). The backup_status
// filter, sort key and actions do not exist below 3.72.

// splitStatus reports whether the client sees the two fields.
func splitStatus(v version) bool { return v.atLeast(vBackupStatus) }

// addStatus puts the volume's status (and from 3.72 its backup_status)
// into a volume view.
func addStatus(view map[string]any, v *model.Volume, ver version) {
	if !splitStatus(ver) {
		view["status"] = model.MergedStatus(v.Status, v.BackupStatus)
		return
	}
	view["status"] = v.Status
	view["backup_status"] = nullable(v.BackupStatus)
}

// legacyFilter is store.VolumeFilter.Legacy for the client's version.
func legacyFilter(ver version) bool { return !splitStatus(ver) }

// statusFilterValues are the values the status filter accepts.
func statusFilterValues(ver version) []string {
	if splitStatus(ver) {
		return model.VolumeStatuses
	}
	return slices.Concat(model.VolumeStatuses, model.LegacyMergedBackupStatuses)
}

// volumeListKeys are the volume listing's filters at ver.
func volumeListKeys(ver version) []string {
	keys := []string{"status", "name", "sort", "sort_key", "sort_dir"}
	if splitStatus(ver) {
		keys = append(keys, "backup_status")
	}
	return keys
}

// volumeSortKeys are the sort keys at ver.
func volumeSortKeys(ver version) []string {
	keys := []string{"id", "name", "size", "status", "created_at", "updated_at"}
	if splitStatus(ver) {
		keys = append(keys, "backup_status")
	}
	return keys
}

// resetStatus is the transition of os-reset_status {"status": value}.
func resetStatus(ver version, value string) (model.Transition, error) {
	if splitStatus(ver) {
		if model.IsBackupValue(value) {
			return model.Transition{}, invalidf("%q is a backup_status value, not a status: from microversion 3.72 use the os-set_backup_status action to set it", value)
		}
		if err := oneOfValues("status", value, model.VolumeStatuses); err != nil {
			return model.Transition{}, err
		}
		return model.ResetStatus(value), nil
	}
	if err := oneOfValues("status", value, slices.Concat(model.VolumeStatuses, model.BackupStatuses)); err != nil {
		return model.Transition{}, err
	}
	return model.ResetStatusLegacy(value), nil
}
