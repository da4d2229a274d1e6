package csi

import (
	"maps"
	"slices"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// access is what a volume capability asks for, once checked.
type access struct {
	block      bool
	fsType     string // mount: ext4 (default) or xfs
	mountFlags []string
	readOnly   bool // a reader-only access mode
}

// checkCapability checks one volume capability. Volumes live on one node,
// so only single-node access modes are possible; a mount volume is ext4
// or xfs.
func checkCapability(c *csipb.VolumeCapability) (access, error) {
	var a access
	if c == nil {
		return a, errorf(errdefs.ErrInvalid, "volume_capability is required")
	}
	switch mode := c.GetAccessMode().GetMode(); mode {
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
		a.readOnly = true
	case csipb.VolumeCapability_AccessMode_UNKNOWN:
		return a, errorf(errdefs.ErrInvalid, "volume_capability.access_mode is required")
	default:
		return a, errorf(errdefs.ErrInvalid, "access mode %s is not supported: Bulkhead volumes live on one node (use SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY; the SINGLE_NODE_MULTI_WRITER capability is not offered)", mode)
	}
	switch t := c.GetAccessType().(type) {
	case *csipb.VolumeCapability_Block:
		a.block = true
	case *csipb.VolumeCapability_Mount:
		a.fsType = strings.ToLower(t.Mount.GetFsType())
		switch a.fsType {
		case "":
			a.fsType = fsExt4
		case fsExt4, fsXFS:
		default:
			return a, errorf(errdefs.ErrInvalid, "fs_type %q is not supported; use ext4 or xfs", t.Mount.GetFsType())
		}
		for _, f := range t.Mount.GetMountFlags() {
			if strings.TrimSpace(f) == "" {
				return a, errorf(errdefs.ErrInvalid, "empty mount flag in %q", t.Mount.GetMountFlags())
			}
		}
		a.mountFlags = slices.Clone(t.Mount.GetMountFlags())
	default:
		return a, errorf(errdefs.ErrInvalid, "volume_capability needs an access type: mount or block")
	}
	return a, nil
}

// checkCapabilities checks a list of capabilities, which must not be empty.
func checkCapabilities(caps []*csipb.VolumeCapability) error {
	if len(caps) == 0 {
		return errorf(errdefs.ErrInvalid, "volume_capabilities is required")
	}
	for _, c := range caps {
		if _, err := checkCapability(c); err != nil {
			return err
		}
	}
	return nil
}

// reservedParameterPrefix marks parameters the CO adds for itself
// (external-provisioner's csi.storage.k8s.io/…); they are ignored.
const reservedParameterPrefix = "csi.storage.k8s.io/"

// checkParameters rejects parameters Bulkhead does not know: it takes none
// (a StorageClass needs no parameters), so a typo is not silently ignored.
func checkParameters(params map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(params)) {
		if !strings.HasPrefix(k, reservedParameterPrefix) {
			return errorf(errdefs.ErrInvalid, "unknown parameter %q: Bulkhead takes no parameters", k)
		}
	}
	return nil
}
