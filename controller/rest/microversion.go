package rest

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// version is a microversion 3.N, held as N.
type version int

// The supported range.
const (
	minVersion version = 0
	maxVersion version = 73
)

// The microversions that change behaviour (3.N).
const (
	vServiceCluster  = 7  // cluster in os-services
	vBackupUpdate    = 9  // PUT backups/{id}
	vSnapshotGroup   = 13 // group_snapshot_id in snapshots; group_id in volumes
	vBackupProject   = 18 // os-backup-project-attr:project_id in backups
	vProviderID      = 21 // provider_id in volumes
	vAttachments     = 27 // the attachments API
	vSnapshotUser    = 41 // user_id in snapshots
	vExtendInUse     = 42 // extending in-use volumes
	vBackupMetadata  = 43 // backup metadata
	vAttachComplete  = 44 // attachment os-complete
	vWithCount       = 45 // with_count in listings
	vSharedTargets   = 48 // service_uuid and shared_targets in volumes
	vBackupAZ        = 51 // availability_zone in backup create
	vAttachMode      = 54 // attachment mode
	vBackupUser      = 56 // user_id in backups
	vClusterName     = 61 // cluster_name in volumes (admins)
	vVolumeTypeID    = 63 // volume_type_id in volumes
	vEncryptionKeyID = 64 // encryption_key_id in backups
	vConsumesQuota   = 65 // consumes_quota in volumes and snapshots
	vBackupStatus    = 72 // backup_status (compat.go)
	vBackupProgress  = 73 // progress, bytes_done, bytes_total in backups
)

// The microversion request headers.
const (
	versionHeader       = "OpenStack-API-Version"
	legacyVersionHeader = "OpenStack-Volume-microversion"
)

func (v version) String() string { return "3." + strconv.Itoa(int(v)) }

func (v version) atLeast(n int) bool { return int(v) >= n }

// negotiate reads the requested microversion: OpenStack-API-Version
// ("volume 3.N", "volume latest"; a list naming several services is
// fine), else the legacy OpenStack-Volume-microversion ("3.N"). No header
// means 3.0.
func negotiate(h http.Header) (version, error) {
	var raw, header string
	for _, line := range h.Values(versionHeader) {
		for item := range strings.SplitSeq(line, ",") {
			service, value, _ := strings.Cut(strings.TrimSpace(item), " ")
			if service == "volume" || service == "block-storage" {
				raw, header = strings.TrimSpace(value), versionHeader
			}
		}
	}
	if header == "" {
		if v := h.Get(legacyVersionHeader); v != "" {
			raw, header = strings.TrimSpace(v), legacyVersionHeader
		} else {
			return minVersion, nil
		}
	}
	if raw == "latest" {
		return maxVersion, nil
	}
	major, minor, ok := strings.Cut(raw, ".")
	if !ok || !digits(major) || !digits(minor) {
		return 0, fmt.Errorf("%w: invalid %s header: version %q is not of the form 3.N or latest", errdefs.ErrInvalid, header, raw)
	}
	ma, errMa := strconv.Atoi(major)
	mi, errMi := strconv.Atoi(minor)
	if errMa != nil || errMi != nil || ma != 3 || mi < int(minVersion) || mi > int(maxVersion) {
		return 0, fmt.Errorf("%w: Version %s is not supported by the API. Minimum is %s and maximum is %s.",
			errNotAcceptable, raw, minVersion, maxVersion)
	}
	return version(mi), nil
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// versionsUpdated is the date the newest microversion was added.
const versionsUpdated = "2025-01-01T00:00:00Z"

func (s *server) v3Entry(c *call) map[string]any {
	return map[string]any{
		"id":          "v3.0",
		"status":      "CURRENT",
		"version":     maxVersion.String(),
		"min_version": minVersion.String(),
		"updated":     versionsUpdated,
		"links": []map[string]string{
			{"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
			{"rel": "self", "href": c.base + "/v3/"},
		},
		"media-types": []map[string]string{
			{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"},
		},
	}
}

// versionsRoot is GET /: the versions this API offers (300, as Cinder).
func (s *server) versionsRoot(w http.ResponseWriter, r *http.Request, c *call) error {
	writeJSON(w, http.StatusMultipleChoices, map[string]any{"versions": []any{s.v3Entry(c)}})
	return nil
}

// versionV3 is GET /v3/: the v3 version entry.
func (s *server) versionV3(w http.ResponseWriter, r *http.Request, c *call) error {
	writeJSON(w, http.StatusOK, map[string]any{"versions": []any{s.v3Entry(c)}})
	return nil
}
