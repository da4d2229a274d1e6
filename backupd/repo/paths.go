package repo

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// FormatVersion is the repository format this package writes and the only
// one it reads.
const FormatVersion = 1

// Block sizes.
const (
	// DefaultBlockSize is used when a backup does not choose one.
	DefaultBlockSize = 4 << 20
	// MinBlockSize and MaxBlockSize bound the block size; it must also be
	// a multiple of MinBlockSize, so blocks stay aligned to sectors and
	// pages and can become holes on restore.
	MinBlockSize = 4 << 10
	MaxBlockSize = 64 << 20
	// MaxBlocks bounds the number of blocks of one volume, and so the
	// size of a manifest (about 67 bytes a block, at most ~280 MB). With
	// the default block size it allows volumes of 16 TiB.
	MaxBlocks = 1 << 22
)

// maxIDLen bounds container, volume and backup ids.
const maxIDLen = 128

// validID checks a container, volume or backup id: 1 to 128 characters
// from A-Z a-z 0-9 . _ -, not starting with a dot. Ids become path segments
// and manifest lines, so nothing else is allowed.
func validID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%s is empty: %w", what, errdefs.ErrInvalid)
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("%s %.20q... is longer than %d characters: %w", what, id, maxIDLen, errdefs.ErrInvalid)
	}
	if id[0] == '.' {
		return fmt.Errorf("%s %q starts with a dot: %w", what, id, errdefs.ErrInvalid)
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%s %q has a character other than A-Z a-z 0-9 . _ -: %w", what, id, errdefs.ErrInvalid)
		}
	}
	return nil
}

// volume names the objects of one volume in one container.
type volume struct {
	container string
	id        string
}

func newVolume(container, volumeID string) (volume, error) {
	if err := validID("container", container); err != nil {
		return volume{}, err
	}
	if err := validID("volume id", volumeID); err != nil {
		return volume{}, err
	}
	return volume{container, volumeID}, nil
}

func (v volume) prefix() string { return v.container + "/v1/volumes/" + v.id + "/" }

func (v volume) blocksPrefix() string  { return v.prefix() + "blocks/" }
func (v volume) backupsPrefix() string { return v.prefix() + "backups/" }
func (v volume) locksPrefix() string   { return v.prefix() + "locks/" }

func (v volume) blockKey(h Hash) string {
	s := h.String()
	return v.blocksPrefix() + s[:2] + "/" + s
}

func (v volume) manifestKey(backupID string) string {
	return v.backupsPrefix() + backupID + ".json"
}

// parseBlockKey returns the hash of a block key under v, or false for any
// other key.
func (v volume) parseBlockKey(key string) (Hash, bool) {
	rest, ok := strings.CutPrefix(key, v.blocksPrefix())
	if !ok || len(rest) != 2+1+64 || rest[2] != '/' || rest[:2] != rest[3:5] {
		return Hash{}, false
	}
	h, err := ParseHash(rest[3:])
	return h, err == nil && !h.IsZero()
}

// parseManifestKey returns the backup id of a manifest key under v.
func (v volume) parseManifestKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, v.backupsPrefix())
	if !ok {
		return "", false
	}
	id, ok := strings.CutSuffix(rest, ".json")
	return id, ok && validID("backup id", id) == nil
}

// Hash is the SHA-256 of a block's uncompressed content. The zero Hash
// marks an all-zero block, which is never stored.
type Hash [32]byte

// String returns the hash in lower-case hex, as in keys and manifests.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is the zero-block marker.
func (h Hash) IsZero() bool { return h == Hash{} }

// ParseHash parses 64 lower-case hex digits.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if len(s) != 64 {
		return h, fmt.Errorf("hash %q is not 64 hex digits: %w", s, errdefs.ErrInvalid)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return h, fmt.Errorf("hash %q has a character other than 0-9 a-f: %w", s, errdefs.ErrInvalid)
		}
	}
	_, err := hex.Decode(h[:], []byte(s))
	return h, err
}
