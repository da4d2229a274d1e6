package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// ErrCorrupt is wrapped by every error about repository content that fails
// verification: a manifest that does not parse or validate, a block whose
// hash does not match, a block that is missing.
var ErrCorrupt = errors.New("backup repository corrupt")

// Constant manifest members of format v1.
const (
	manifestFormat  = "bulkhead-backup"
	compressionZstd = "zstd"
	hashSHA256      = "sha256"
)

// MaxManifestSize bounds the manifest a reader accepts, in bytes: a
// manifest of MaxBlocks blocks, all with a hash, plus its header.
const MaxManifestSize = MaxBlocks*67 + 64<<10

// Manifest describes one backup completely: restoring it needs nothing
// else, in particular not its parent.
type Manifest struct {
	Version     int       // FormatVersion
	BackupID    string    // this backup
	VolumeID    string    // the volume it is a copy of
	ParentID    string    // the backup it was made incrementally from, or ""
	CreatedAt   time.Time // when the backup started, UTC
	VolumeSize  int64     // bytes
	BlockSize   int64     // bytes; the last block may be shorter
	Compression string    // "zstd"
	// Blocks holds the hash of block i's content; the zero Hash marks an
	// all-zero block. len(Blocks) == ceil(VolumeSize / BlockSize).
	Blocks []Hash
}

// NumBlocks returns ceil(size / blockSize).
func NumBlocks(size, blockSize int64) int64 {
	return (size + blockSize - 1) / blockSize
}

// BlockLen returns the length of block i: BlockSize, except for a shorter
// last block.
func (m *Manifest) BlockLen(i int64) int64 {
	return min(m.BlockSize, m.VolumeSize-i*m.BlockSize)
}

// Validate checks everything a manifest must satisfy except its checksum
// (which only exists in the encoding). Errors wrap ErrCorrupt.
func (m *Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("manifest: "+format+": %w", append(args, ErrCorrupt)...)
	}
	if m.Version != FormatVersion {
		return bad("format version %d is not supported (this program reads version %d)", m.Version, FormatVersion)
	}
	if m.Compression != compressionZstd {
		return bad("compression %q is not supported (want %q)", m.Compression, compressionZstd)
	}
	for _, id := range []struct{ what, id string }{{"backup id", m.BackupID}, {"volume id", m.VolumeID}} {
		if err := validID(id.what, id.id); err != nil {
			return bad("%v", err)
		}
	}
	if m.ParentID != "" {
		if err := validID("parent id", m.ParentID); err != nil {
			return bad("%v", err)
		}
		if m.ParentID == m.BackupID {
			return bad("backup %s is its own parent", m.BackupID)
		}
	}
	if m.CreatedAt.IsZero() {
		return bad("created_at is missing")
	}
	if err := validBlockSize(m.BlockSize); err != nil {
		return bad("%v", err)
	}
	if m.VolumeSize < 0 || m.VolumeSize > MaxBlocks*m.BlockSize {
		return bad("volume size %d is out of range for block size %d", m.VolumeSize, m.BlockSize)
	}
	if want := NumBlocks(m.VolumeSize, m.BlockSize); int64(len(m.Blocks)) != want {
		return bad("%d blocks listed, but volume size %d needs %d of %d bytes", len(m.Blocks), m.VolumeSize, want, m.BlockSize)
	}
	return nil
}

func validBlockSize(bs int64) error {
	if bs < MinBlockSize || bs > MaxBlockSize || bs%MinBlockSize != 0 {
		return fmt.Errorf("block size %d is not a multiple of %d between %d and %d: %w",
			bs, MinBlockSize, MinBlockSize, MaxBlockSize, errdefs.ErrInvalid)
	}
	return nil
}

// manifestJSON is the wire form. Member order is the order written.
type manifestJSON struct {
	Format      string   `json:"format"`
	Version     int      `json:"version"`
	BackupID    string   `json:"backup_id"`
	VolumeID    string   `json:"volume_id"`
	ParentID    string   `json:"parent_id"`
	CreatedAt   string   `json:"created_at"`
	VolumeSize  int64    `json:"volume_size"`
	BlockSize   int64    `json:"block_size"`
	Compression string   `json:"compression"`
	Hash        string   `json:"hash"`
	Blocks      []string `json:"blocks"`
	Checksum    string   `json:"checksum"`
}

// checksum computes the manifest checksum over the canonical text of
// docs/backup-format.md ("Manifest checksum"): one line per header field,
// then one line per block, each ending in "\n".
func checksum(m *manifestJSON) string {
	h := sha256.New()
	line := func(parts ...string) {
		for i, p := range parts {
			if i > 0 {
				io.WriteString(h, " ")
			}
			io.WriteString(h, p)
		}
		io.WriteString(h, "\n")
	}
	line(m.Format)
	line("version", strconv.Itoa(m.Version))
	line("backup_id", m.BackupID)
	line("volume_id", m.VolumeID)
	line("parent_id", m.ParentID)
	line("created_at", m.CreatedAt)
	line("volume_size", strconv.FormatInt(m.VolumeSize, 10))
	line("block_size", strconv.FormatInt(m.BlockSize, 10))
	line("compression", m.Compression)
	line("hash", m.Hash)
	line("blocks", strconv.Itoa(len(m.Blocks)))
	for _, b := range m.Blocks {
		line(b)
	}
	return hashSHA256 + ":" + hex.EncodeToString(h.Sum(nil))
}

// Marshal validates m and returns its JSON encoding with the checksum.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	w := manifestJSON{
		Format:      manifestFormat,
		Version:     m.Version,
		BackupID:    m.BackupID,
		VolumeID:    m.VolumeID,
		ParentID:    m.ParentID,
		CreatedAt:   m.CreatedAt.UTC().Format(time.RFC3339Nano),
		VolumeSize:  m.VolumeSize,
		BlockSize:   m.BlockSize,
		Compression: m.Compression,
		Hash:        hashSHA256,
		Blocks:      make([]string, len(m.Blocks)),
	}
	for i, b := range m.Blocks {
		if !b.IsZero() {
			w.Blocks[i] = b.String()
		}
	}
	w.Checksum = checksum(&w)
	var buf bytes.Buffer
	buf.Grow(len(m.Blocks)*67 + 1024)
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&w); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// DecodeManifest parses and verifies a manifest: known format and version
// (checked first, so a newer format gets a clear message), no unknown or
// missing members, well-formed hashes, consistent sizes, and the checksum.
// Errors wrap ErrCorrupt.
func DecodeManifest(data []byte) (*Manifest, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("manifest: "+format+": %w", append(args, ErrCorrupt)...)
	}
	if len(data) > MaxManifestSize {
		return nil, bad("%d bytes is over the limit of %d", len(data), MaxManifestSize)
	}
	var head struct {
		Format  string `json:"format"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, bad("not valid JSON (truncated?): %v", err)
	}
	if head.Format != manifestFormat {
		return nil, bad("format is %q, not %q", head.Format, manifestFormat)
	}
	if head.Version != FormatVersion {
		return nil, bad("format version %d is not supported (this program reads version %d)", head.Version, FormatVersion)
	}
	var in manifestIn
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, bad("%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad("data after the manifest object")
	}
	w, err := in.complete()
	if err != nil {
		return nil, bad("%v", err)
	}
	if w.Hash != hashSHA256 {
		return nil, bad("hash %q is not supported (want %q)", w.Hash, hashSHA256)
	}
	if want := checksum(w); w.Checksum != want {
		return nil, bad("checksum mismatch: manifest says %q, content gives %q", w.Checksum, want)
	}
	created, err := time.Parse(time.RFC3339Nano, w.CreatedAt)
	if err != nil {
		return nil, bad("created_at: %v", err)
	}
	m := &Manifest{
		Version:     w.Version,
		BackupID:    w.BackupID,
		VolumeID:    w.VolumeID,
		ParentID:    w.ParentID,
		CreatedAt:   created.UTC(),
		VolumeSize:  w.VolumeSize,
		BlockSize:   w.BlockSize,
		Compression: w.Compression,
	}
	// Check the sizes before allocating by them.
	if err := m.validateSizes(int64(len(w.Blocks))); err != nil {
		return nil, err
	}
	m.Blocks = make([]Hash, len(w.Blocks))
	for i, s := range w.Blocks {
		if s == "" {
			continue
		}
		h, err := ParseHash(s)
		if err != nil {
			return nil, bad("block %d: %v", i, err)
		}
		if h.IsZero() {
			return nil, bad("block %d: the all-zero hash is reserved; zero blocks are written as \"\"", i)
		}
		m.Blocks[i] = h
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// validateSizes checks the sizes of m as if it had n blocks.
func (m *Manifest) validateSizes(n int64) error {
	if n > MaxBlocks {
		return fmt.Errorf("manifest: %d blocks is over the limit of %d: %w", n, MaxBlocks, ErrCorrupt)
	}
	if err := validBlockSize(m.BlockSize); err != nil {
		return fmt.Errorf("manifest: %v: %w", err, ErrCorrupt)
	}
	if m.VolumeSize < 0 || m.VolumeSize > MaxBlocks*m.BlockSize {
		return fmt.Errorf("manifest: volume size %d is out of range for block size %d: %w", m.VolumeSize, m.BlockSize, ErrCorrupt)
	}
	if want := NumBlocks(m.VolumeSize, m.BlockSize); n != want {
		return fmt.Errorf("manifest: %d blocks listed, but volume size %d needs %d of %d bytes: %w",
			n, m.VolumeSize, want, m.BlockSize, ErrCorrupt)
	}
	return nil
}

// manifestIn is the wire form for decoding: a nil member was missing or
// null, which a v1 manifest never has.
type manifestIn struct {
	Format      *string   `json:"format"`
	Version     *int      `json:"version"`
	BackupID    *string   `json:"backup_id"`
	VolumeID    *string   `json:"volume_id"`
	ParentID    *string   `json:"parent_id"`
	CreatedAt   *string   `json:"created_at"`
	VolumeSize  *int64    `json:"volume_size"`
	BlockSize   *int64    `json:"block_size"`
	Compression *string   `json:"compression"`
	Hash        *string   `json:"hash"`
	Blocks      *[]string `json:"blocks"`
	Checksum    *string   `json:"checksum"`
}

func (in *manifestIn) complete() (*manifestJSON, error) {
	missing := func(name string) error { return fmt.Errorf("member %q is missing or null", name) }
	w := &manifestJSON{}
	strs := []struct {
		name string
		src  *string
		dst  *string
	}{
		{"format", in.Format, &w.Format}, {"backup_id", in.BackupID, &w.BackupID},
		{"volume_id", in.VolumeID, &w.VolumeID}, {"parent_id", in.ParentID, &w.ParentID},
		{"created_at", in.CreatedAt, &w.CreatedAt}, {"compression", in.Compression, &w.Compression},
		{"hash", in.Hash, &w.Hash}, {"checksum", in.Checksum, &w.Checksum},
	}
	for _, f := range strs {
		if f.src == nil {
			return nil, missing(f.name)
		}
		*f.dst = *f.src
	}
	switch {
	case in.Version == nil:
		return nil, missing("version")
	case in.VolumeSize == nil:
		return nil, missing("volume_size")
	case in.BlockSize == nil:
		return nil, missing("block_size")
	case in.Blocks == nil || *in.Blocks == nil:
		return nil, missing("blocks")
	}
	w.Version, w.VolumeSize, w.BlockSize, w.Blocks = *in.Version, *in.VolumeSize, *in.BlockSize, *in.Blocks
	return w, nil
}

// ReadManifest reads and verifies the manifest of a backup. A backup
// without a manifest does not exist: ErrNotFound. A manifest that fails
// verification, or names another volume or backup than its key: ErrCorrupt.
func ReadManifest(ctx context.Context, store objstore.Store, container, volumeID, backupID string) (*Manifest, error) {
	v, err := newVolume(container, volumeID)
	if err != nil {
		return nil, err
	}
	if err := validID("backup id", backupID); err != nil {
		return nil, err
	}
	return readManifest(ctx, store, v, backupID)
}

func readManifest(ctx context.Context, store objstore.Store, v volume, backupID string) (*Manifest, error) {
	key := v.manifestKey(backupID)
	rc, err := store.Get(ctx, key)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("backup %s of volume %s not found (no manifest %s): %w", backupID, v.id, key, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest of backup %s: %w", backupID, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, MaxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", key, err)
	}
	m, err := DecodeManifest(data)
	if err != nil {
		return nil, fmt.Errorf("backup %s (%s): %w", backupID, key, err)
	}
	if m.VolumeID != v.id || m.BackupID != backupID {
		return nil, fmt.Errorf("manifest %s describes backup %s of volume %s: %w", key, m.BackupID, m.VolumeID, ErrCorrupt)
	}
	return m, nil
}

// ListBackups returns the ids of the backups of a volume (those with a
// manifest), sorted.
func ListBackups(ctx context.Context, store objstore.Store, container, volumeID string) ([]string, error) {
	v, err := newVolume(container, volumeID)
	if err != nil {
		return nil, err
	}
	return listBackups(ctx, store, v)
}

func listBackups(ctx context.Context, store objstore.Store, v volume) ([]string, error) {
	ids := []string{}
	err := store.List(ctx, v.backupsPrefix(), func(key string) error {
		if id, ok := v.parseManifestKey(key); ok {
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backups of volume %s: %w", v.id, err)
	}
	sort.Strings(ids)
	return ids, nil
}
