package repo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Extent is a byte range of a volume.
type Extent struct {
	Offset int64
	Length int64
}

// BackupSpec says what to back up and where.
type BackupSpec struct {
	Store     objstore.Store
	Container string
	VolumeID  string
	BackupID  string
	// ParentID names an existing backup of the same volume that this one
	// is made incrementally from, or "". It is recorded in the manifest;
	// with Changed it also saves reading unchanged blocks.
	ParentID string
	// Source is read at offsets [0, Size). When it is an *os.File of a
	// regular file, holes (SEEK_DATA) are skipped without reading; this
	// moves the file's offset.
	Source io.ReaderAt
	Size   int64
	// BlockSize defaults to the parent's block size for an incremental
	// backup, otherwise to DefaultBlockSize.
	BlockSize int64
	// Changed, when not nil and ParentID is set, lists the ranges that may
	// differ from the parent: only blocks touching one are read, the others
	// are taken from the parent's manifest without reading the source. The
	// caller vouches for the list (it comes from FIEMAP or thin_delta); a
	// range it misses is silently stale in the backup. nil reads
	// everything; an empty, non-nil list reads nothing the parent has.
	Changed []Extent
	// Parallel is the number of blocks hashed, compressed and uploaded at
	// once. Default 4.
	Parallel int
	// MemoryLimit, when > 0, lowers Parallel until BackupMemory(Parallel,
	// BlockSize) fits in it; a limit that does not fit even one worker is
	// refused.
	MemoryLimit int64
	// Lock tunes the lock that keeps garbage collection away while the
	// backup runs.
	Lock LockOptions
}

// Stats counts what a backup did. Every byte of the volume is counted in
// exactly one of BytesZero, BytesUnchanged, BytesDeduplicated, and the
// uncompressed size of the blocks uploaded.
type Stats struct {
	// Blocks is the number of blocks of the volume.
	Blocks int64
	// BytesRead were read from the source (holes are not read).
	BytesRead int64
	// BytesZero are in all-zero blocks and holes, which are not stored.
	BytesZero int64
	// BytesUnchanged were taken from the parent without reading.
	BytesUnchanged int64
	// BytesDeduplicated were read but not uploaded: the volume already
	// had a block with their content.
	BytesDeduplicated int64
	// BytesUploaded is the compressed size of the blocks uploaded.
	BytesUploaded int64
	// BlocksUploaded is the number of blocks uploaded.
	BlocksUploaded int64
	// Duration is the wall time of the whole backup.
	Duration time.Duration
}

// DefaultParallel is the default of BackupSpec.Parallel and
// RestoreSpec.Parallel.
const DefaultParallel = 4

// maxParallel bounds Parallel.
const maxParallel = 256

// Backup writes a backup of spec.Source to the repository and returns what
// it did. It calls progress (if not nil) after each block with the bytes of
// the volume dealt with so far and spec.Size; the calls never overlap, done
// never decreases, and the last call of a successful backup has
// done == total. progress must return quickly.
//
// Order of writes: the backup's lock object; blocks (in any order, in
// parallel); the manifest, last, once every block is stored; then the lock
// is removed. A backup that fails for any reason writes no manifest and so
// does not exist; blocks it uploaded are unreferenced and the next garbage
// collection removes them.
//
// Memory: the buffers take at most BackupMemory(Parallel, BlockSize)
// (about 41 MiB with the defaults on two CPUs, 46 MiB on four or more),
// within the design's budget of (Parallel+2) × BlockSize × 2; add the block
// map (32 bytes a block) and, for an incremental backup, the parent's.
//
// Errors: a backup id that already has a manifest gives errdefs.ErrConflict;
// a missing parent errdefs.ErrNotFound; an invalid spec errdefs.ErrInvalid;
// store failures keep their kinds (errdefs.ErrUnavailable, ...); a source
// that cannot be read or is shorter than Size fails with the reader's error.
func Backup(ctx context.Context, spec BackupSpec, progress func(done, total int64)) (Stats, error) {
	opts := spec.Lock.withDefaults()
	start := opts.Now()
	stats, err := backup(ctx, spec, opts, progress)
	stats.Duration = opts.Now().Sub(start)
	if err != nil {
		return stats, fmt.Errorf("backup %s of volume %s: %w", spec.BackupID, spec.VolumeID, err)
	}
	return stats, nil
}

func backup(ctx context.Context, spec BackupSpec, opts LockOptions, progress func(done, total int64)) (Stats, error) {
	v, err := checkBackupSpec(&spec)
	if err != nil {
		return Stats{}, err
	}
	createdAt := opts.Now().UTC()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// The lock comes first: a collection that starts later sees it and
	// deletes nothing, so every block this backup finds present stays.
	lock, err := acquireLock(ctx, spec.Store, v, lockBackup, spec.BackupID, opts, cancel)
	if err != nil {
		return Stats{}, err
	}
	defer lock.release() // best effort; a lock left behind goes stale
	if err := waitForCollections(ctx, spec.Store, v, lock.key, opts); err != nil {
		return Stats{}, causeOf(ctx, err)
	}

	key := v.manifestKey(spec.BackupID)
	if _, err := spec.Store.Stat(ctx, key); err == nil {
		return Stats{}, fmt.Errorf("backup %s exists already (%s): %w", spec.BackupID, key, errdefs.ErrConflict)
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return Stats{}, causeOf(ctx, err)
	}

	var parent *Manifest
	if spec.ParentID != "" {
		parent, err = readManifest(ctx, spec.Store, v, spec.ParentID)
		if err != nil {
			return Stats{}, causeOf(ctx, fmt.Errorf("parent: %w", err))
		}
		if spec.BlockSize == 0 {
			spec.BlockSize = parent.BlockSize
		} else if spec.Changed != nil && spec.BlockSize != parent.BlockSize {
			return Stats{}, fmt.Errorf("block size %d differs from the parent's %d; an incremental backup with changed extents must keep it: %w",
				spec.BlockSize, parent.BlockSize, errdefs.ErrInvalid)
		}
	}
	if spec.BlockSize == 0 {
		spec.BlockSize = DefaultBlockSize
	}
	if err := checkSizes(&spec); err != nil {
		return Stats{}, err
	}

	p, err := newPipeline(spec, v, parent, progress)
	if err != nil {
		return Stats{}, err
	}
	if err := p.run(ctx); err != nil {
		return p.stats, causeOf(ctx, err)
	}

	m := &Manifest{
		Version:     FormatVersion,
		BackupID:    spec.BackupID,
		VolumeID:    spec.VolumeID,
		ParentID:    spec.ParentID,
		CreatedAt:   createdAt,
		VolumeSize:  spec.Size,
		BlockSize:   spec.BlockSize,
		Compression: compressionZstd,
		Blocks:      p.blocks,
	}
	data, err := m.Marshal()
	if err != nil {
		return p.stats, err
	}
	// A backup whose lock may look stale to others must not commit: a
	// collection could have deleted blocks it counted on.
	if err := lock.valid(); err != nil {
		return p.stats, err
	}
	if err := spec.Store.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		return p.stats, causeOf(ctx, fmt.Errorf("write manifest: %w", err))
	}
	return p.stats, nil
}

// causeOf prefers the reason ctx was canceled (a lost lock) over the
// context.Canceled that the operations report.
func causeOf(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		if cause := context.Cause(ctx); cause != nil && cause != ctx.Err() {
			return cause
		}
	}
	return err
}

func checkBackupSpec(spec *BackupSpec) (volume, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalid)...)
	}
	if spec.Store == nil {
		return volume{}, invalid("no store")
	}
	v, err := newVolume(spec.Container, spec.VolumeID)
	if err != nil {
		return volume{}, err
	}
	if err := validID("backup id", spec.BackupID); err != nil {
		return volume{}, err
	}
	if spec.ParentID != "" {
		if err := validID("parent id", spec.ParentID); err != nil {
			return volume{}, err
		}
		if spec.ParentID == spec.BackupID {
			return volume{}, invalid("backup %s cannot be its own parent", spec.BackupID)
		}
	} else if spec.Changed != nil {
		return volume{}, invalid("changed extents need a parent backup")
	}
	if spec.Source == nil {
		return volume{}, invalid("no source")
	}
	if spec.Size < 0 {
		return volume{}, invalid("negative size %d", spec.Size)
	}
	for _, e := range spec.Changed {
		if e.Offset < 0 || e.Length < 0 {
			return volume{}, invalid("changed extent %+v is negative", e)
		}
	}
	if spec.Parallel < 0 || spec.Parallel > maxParallel {
		return volume{}, invalid("parallel %d is not between 1 and %d", spec.Parallel, maxParallel)
	}
	if spec.Parallel == 0 {
		spec.Parallel = DefaultParallel
	}
	if spec.MemoryLimit < 0 {
		return volume{}, invalid("negative memory limit")
	}
	if spec.BlockSize != 0 {
		if err := validBlockSize(spec.BlockSize); err != nil {
			return volume{}, err
		}
	}
	return v, nil
}

// checkSizes runs once the block size is known.
func checkSizes(spec *BackupSpec) error {
	if n := NumBlocks(spec.Size, spec.BlockSize); n > MaxBlocks {
		return fmt.Errorf("volume size %d needs %d blocks of %d bytes, over the limit of %d; use a larger block size: %w",
			spec.Size, n, spec.BlockSize, MaxBlocks, errdefs.ErrInvalid)
	}
	if spec.MemoryLimit > 0 {
		for spec.Parallel > 1 && BackupMemory(spec.Parallel, spec.BlockSize) > spec.MemoryLimit {
			spec.Parallel--
		}
		if need := BackupMemory(spec.Parallel, spec.BlockSize); need > spec.MemoryLimit {
			return fmt.Errorf("memory limit %d is below the %d bytes one worker needs with blocks of %d bytes: %w",
				spec.MemoryLimit, need, spec.BlockSize, errdefs.ErrInvalid)
		}
	}
	return nil
}

// waitForCollections returns once no live garbage-collection lock of v
// exists. The caller's own lock is already written, so a collection that
// starts after this check sees it and deletes nothing.
func waitForCollections(ctx context.Context, store objstore.Store, v volume, ownKey string, opts LockOptions) error {
	for {
		locks, err := listLocks(ctx, store, v, ownKey)
		if err != nil {
			return err
		}
		var running *foundLock
		for i, l := range locks {
			if l.kind == lockGC && l.live(opts) {
				running = &locks[i]
				break
			}
		}
		if running == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for garbage collection %s to end: %w", running, ctx.Err())
		case <-time.After(opts.Poll):
		}
	}
}

// pipeline reads, hashes, compresses and uploads the blocks of one backup.
type pipeline struct {
	spec   BackupSpec
	v      volume
	file   *os.File // spec.Source when it is a regular file, for SEEK_DATA
	reuse  []bool   // block i is taken from parent
	parent *Manifest
	blocks []Hash // the result, written by the reader and the workers at distinct indexes
	enc    *zstd.Encoder

	progress func(done, total int64)

	mu    sync.Mutex
	stats Stats
	done  int64
	inRun map[Hash]struct{} // blocks claimed by a worker of this run
}

type job struct {
	index int64
	data  []byte
}

func newPipeline(spec BackupSpec, v volume, parent *Manifest, progress func(done, total int64)) (*pipeline, error) {
	n := NumBlocks(spec.Size, spec.BlockSize)
	p := &pipeline{
		spec:     spec,
		v:        v,
		parent:   parent,
		blocks:   make([]Hash, n),
		progress: progress,
		inRun:    make(map[Hash]struct{}),
		stats:    Stats{Blocks: n},
	}
	if f, ok := spec.Source.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			p.file = f
		}
	}
	if parent != nil && spec.Changed != nil {
		p.reuse = make([]bool, n)
		// A block covering the same bytes in both volumes can be reused:
		// a whole block, or the short last one of an unchanged size. A
		// block that grew or shrank with the volume is read.
		for i := range min(n, int64(len(parent.Blocks))) {
			p.reuse[i] = parent.BlockLen(i) == min(spec.BlockSize, spec.Size-i*spec.BlockSize)
		}
		for _, e := range spec.Changed {
			end := min(e.Offset+e.Length, spec.Size)
			if e.Length == 0 || e.Offset >= end {
				continue
			}
			for i := e.Offset / spec.BlockSize; i <= (end-1)/spec.BlockSize; i++ {
				p.reuse[i] = false
			}
		}
	}
	// The encoders' state grows with the window (about 2.5 window sizes
	// each); matches more than 1 MiB apart add little, so the window stays
	// at 1 MiB for big blocks.
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderConcurrency(encoders(spec.Parallel)),
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithWindowSize(min(windowSize(spec.BlockSize), maxEncoderWindow)),
		zstd.WithLowerEncoderMem(true),
		zstd.WithEncoderCRC(true))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	p.enc = enc
	return p, nil
}

// windowSize returns the power of two zstd wants that covers a block.
func windowSize(blockSize int64) int {
	w := 1 << bits.Len64(uint64(blockSize-1))
	return max(min(w, zstd.MaxWindowSize), zstd.MinWindowSize)
}

// maxEncoderWindow bounds the zstd window the writer uses.
const maxEncoderWindow = 1 << 20

// encoders is the number of zstd encoders for parallel workers: more than
// the CPUs cannot run at once, and each holds a few MiB.
func encoders(parallel int) int { return max(1, min(parallel, runtime.GOMAXPROCS(0))) }

// BackupMemory returns the peak memory of the buffers of a backup with
// parallel workers and blocks of blockSize bytes: parallel+1 block
// buffers, parallel buffers for compressed blocks, and the zstd encoders'
// state (one encoder per worker up to GOMAXPROCS, about 2.5 windows each,
// the window being the block size rounded up to a power of two, at most
// 1 MiB). With the defaults (4 workers, 4 MiB blocks) it is 41 MiB on two
// CPUs and 46 MiB on four or more, below the design's budget of
// (parallel+2) × blockSize × 2 = 48 MiB. The Go heap can hold up to GOGC
// percent more in garbage between collections.
func BackupMemory(parallel int, blockSize int64) int64 {
	window := int64(min(windowSize(blockSize), maxEncoderWindow))
	p := int64(parallel)
	return (p+1)*blockSize + p*compressBound(blockSize) + int64(encoders(parallel))*window*5/2
}

// compressBound is the capacity reserved for a compressed block; zstd
// rarely needs more than the input plus a little framing.
func compressBound(n int64) int64 { return n + n/128 + 1024 }

func (p *pipeline) run(ctx context.Context) error {
	defer p.enc.Close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if p.progress != nil && p.spec.Size == 0 {
		p.progress(0, 0)
	}

	workers := p.spec.Parallel
	bufSize := min(p.spec.BlockSize, p.spec.Size)
	// pool holds free block buffers; at most workers+1 are ever made: one
	// per worker and one the reader fills while they are busy (jobs is
	// unbuffered).
	maxBufs := workers + 1
	pool := make(chan []byte, maxBufs)
	made := 0
	jobs := make(chan job)

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var cbuf []byte
			for j := range jobs {
				if ctx.Err() == nil {
					if err := p.process(ctx, j, &cbuf); err != nil {
						cancel(err)
					}
				}
				pool <- j.data[:cap(j.data)]
			}
		})
	}

	readErr := func() error {
		defer close(jobs)
		bs := p.spec.BlockSize
		for i := range int64(len(p.blocks)) {
			off := i * bs
			length := min(bs, p.spec.Size-off)
			if p.reuse != nil && p.reuse[i] {
				p.blocks[i] = p.parent.Blocks[i]
				p.account(length, &p.stats.BytesUnchanged)
				continue
			}
			if p.file != nil && isHole(p.file, off, length) {
				p.account(length, &p.stats.BytesZero)
				continue
			}
			var buf []byte
			if made < maxBufs {
				select {
				case buf = <-pool:
				default:
					buf = make([]byte, bufSize)
					made++
				}
			} else {
				select {
				case buf = <-pool:
				case <-ctx.Done():
					return nil
				}
			}
			buf = buf[:length]
			n, err := p.spec.Source.ReadAt(buf, off)
			if n < len(buf) {
				if err == nil || err == io.EOF {
					err = fmt.Errorf("source ended at %d, before its size %d: %w", off+int64(n), p.spec.Size, io.ErrUnexpectedEOF)
				}
				pool <- buf
				return fmt.Errorf("read block %d at offset %d: %w", i, off, err)
			}
			p.mu.Lock()
			p.stats.BytesRead += length
			p.mu.Unlock()
			select {
			case jobs <- job{index: i, data: buf}:
			case <-ctx.Done():
				pool <- buf
				return nil
			}
		}
		return nil
	}()
	if readErr != nil {
		cancel(readErr)
	}
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// process stores one block read from the source.
func (p *pipeline) process(ctx context.Context, j job, cbuf *[]byte) error {
	length := int64(len(j.data))
	if isZero(j.data) {
		p.account(length, &p.stats.BytesZero)
		return nil
	}
	h := Hash(sha256.Sum256(j.data))
	p.blocks[j.index] = h

	p.mu.Lock()
	_, claimed := p.inRun[h]
	p.inRun[h] = struct{}{}
	p.mu.Unlock()
	if claimed {
		// Another worker of this run stores it; if that fails, so does
		// the backup.
		p.account(length, &p.stats.BytesDeduplicated)
		return nil
	}
	key := p.v.blockKey(h)
	_, err := p.spec.Store.Stat(ctx, key)
	if err == nil {
		p.account(length, &p.stats.BytesDeduplicated)
		return nil
	}
	if !errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("block %d: %w", j.index, err)
	}
	if *cbuf == nil {
		*cbuf = make([]byte, 0, compressBound(p.spec.BlockSize))
	}
	c := p.enc.EncodeAll(j.data, (*cbuf)[:0])
	*cbuf = c
	if err := p.spec.Store.Put(ctx, key, bytes.NewReader(c), int64(len(c))); err != nil {
		return fmt.Errorf("upload block %d: %w", j.index, err)
	}
	p.mu.Lock()
	p.stats.BytesUploaded += int64(len(c))
	p.stats.BlocksUploaded++
	p.mu.Unlock()
	p.account(length, nil)
	return nil
}

// account adds n bytes of the volume to counter (if not nil) and to the
// progress.
func (p *pipeline) account(n int64, counter *int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if counter != nil {
		*counter += n
	}
	p.done += n
	if p.progress != nil {
		p.progress(p.done, p.spec.Size)
	}
}

var zeroChunk [64 << 10]byte

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroChunk))
		if !bytes.Equal(b[:n], zeroChunk[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
