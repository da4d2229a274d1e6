package repo

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// ZeroMode says how Restore puts zero blocks into the target.
type ZeroMode int

const (
	// ZeroAuto punches holes where the target can have them (an *os.File,
	// or a HolePuncher), and writes zeros elsewhere or when punching is
	// not supported.
	ZeroAuto ZeroMode = iota
	// ZeroWrite always writes zeros.
	ZeroWrite
	// ZeroPunch punches holes and fails where that is not possible.
	ZeroPunch
	// ZeroSkip writes nothing for zero blocks: for a target known to read
	// as zeros already, such as a freshly created sparse file or thin
	// volume. Fastest; wrong for a target with old data.
	ZeroSkip
)

func (z ZeroMode) String() string {
	switch z {
	case ZeroAuto:
		return "auto"
	case ZeroWrite:
		return "write"
	case ZeroPunch:
		return "punch"
	case ZeroSkip:
		return "skip"
	}
	return fmt.Sprintf("ZeroMode(%d)", int(z))
}

// HolePuncher is a restore target that can deallocate a range, which then
// reads as zeros. *os.File targets get this through fallocate(2)
// (FALLOC_FL_PUNCH_HOLE) without implementing it.
type HolePuncher interface {
	PunchHole(off, length int64) error
}

// RestoreSpec says which backup to restore and where.
type RestoreSpec struct {
	Store     objstore.Store
	Container string
	VolumeID  string
	BackupID  string
	// Target receives the volume's bytes at [0, VolumeSize). When it is an
	// *os.File: a regular file shorter than the volume is extended first;
	// a block device smaller than the volume is refused before anything is
	// written; bytes past the volume's size are left as they are; and the
	// file is fsynced before Restore returns.
	Target io.WriterAt
	// Zero says how zero blocks reach the target (default ZeroAuto).
	Zero ZeroMode
	// Parallel is the number of blocks fetched and verified at once.
	// Default 4. Memory: about 2 × Parallel × BlockSize.
	Parallel int
}

// RestoreStats counts what a restore did.
type RestoreStats struct {
	// BytesWritten is the data written to the target, zeros included.
	BytesWritten int64
	// BytesZero are in zero blocks (punched, written or skipped).
	BytesZero int64
	// BytesDownloaded is the compressed size of the blocks fetched.
	BytesDownloaded int64
	// BlocksFetched counts distinct blocks fetched; a block used at
	// several offsets is fetched once.
	BlocksFetched int64
	Duration      time.Duration
}

// Restore writes a backup into spec.Target. It fetches blocks in parallel,
// decompresses them and verifies the SHA-256 of every one against the
// manifest before writing it. Any mismatch, missing block or undecodable
// block fails the restore with an error wrapping ErrCorrupt that names the
// block index and its key (a missing block wraps errdefs.ErrNotFound too);
// the target's content is then not trustworthy. progress is called as for
// Backup, with the volume size as total.
func Restore(ctx context.Context, spec RestoreSpec, progress func(done, total int64)) (RestoreStats, error) {
	start := time.Now()
	stats, err := restore(ctx, spec, progress)
	stats.Duration = time.Since(start)
	if err != nil {
		return stats, fmt.Errorf("restore backup %s of volume %s: %w", spec.BackupID, spec.VolumeID, err)
	}
	return stats, nil
}

func restore(ctx context.Context, spec RestoreSpec, progress func(done, total int64)) (RestoreStats, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalid)...)
	}
	if spec.Store == nil || spec.Target == nil {
		return RestoreStats{}, invalid("no store or no target")
	}
	if spec.Parallel < 0 || spec.Parallel > maxParallel {
		return RestoreStats{}, invalid("parallel %d is not between 1 and %d", spec.Parallel, maxParallel)
	}
	if spec.Parallel == 0 {
		spec.Parallel = DefaultParallel
	}
	if spec.Zero < ZeroAuto || spec.Zero > ZeroSkip {
		return RestoreStats{}, invalid("unknown zero mode %d", spec.Zero)
	}
	v, err := newVolume(spec.Container, spec.VolumeID)
	if err != nil {
		return RestoreStats{}, err
	}
	if err := validID("backup id", spec.BackupID); err != nil {
		return RestoreStats{}, err
	}
	m, err := readManifest(ctx, spec.Store, v, spec.BackupID)
	if err != nil {
		return RestoreStats{}, err
	}
	file, _ := spec.Target.(*os.File)
	if file != nil {
		if err := prepareFile(file, m.VolumeSize); err != nil {
			return RestoreStats{}, err
		}
	}
	r := &restorer{spec: spec, v: v, m: m, file: file, progress: progress}
	if err := r.run(ctx); err != nil {
		return r.stats, err
	}
	if file != nil {
		if err := file.Sync(); err != nil {
			return r.stats, fmt.Errorf("fsync target: %w", err)
		}
	}
	return r.stats, nil
}

// prepareFile makes sure a file target can take size bytes.
func prepareFile(f *os.File, size int64) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if fi.Mode().IsRegular() {
		if fi.Size() < size {
			if err := f.Truncate(size); err != nil {
				return fmt.Errorf("extend target file to %d bytes: %w", size, err)
			}
		}
		return nil
	}
	// A block device's size is where seeking to its end lands.
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil // not seekable (a pipe?); writes will tell
	}
	if end < size {
		return fmt.Errorf("target %s has %d bytes, the volume needs %d: %w", f.Name(), end, size, errdefs.ErrInvalid)
	}
	return nil
}

type restorer struct {
	spec     RestoreSpec
	v        volume
	m        *Manifest
	file     *os.File
	progress func(done, total int64)
	dec      *zstd.Decoder

	zeroOnce sync.Once
	zeroBuf  []byte // BlockSize zeros, for ZeroWrite and fallback

	mu    sync.Mutex
	stats RestoreStats
	done  int64
}

// fetch is one distinct block and every index it is used at.
type fetch struct {
	hash    Hash
	indexes []int64
}

func (r *restorer) run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if r.progress != nil && r.m.VolumeSize == 0 {
		r.progress(0, 0)
	}
	dec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(r.spec.Parallel),
		zstd.WithDecoderMaxMemory(uint64(r.m.BlockSize)),
		zstd.WithDecoderMaxWindow(uint64(max(windowSize(r.m.BlockSize), zstd.MinWindowSize))))
	if err != nil {
		return fmt.Errorf("zstd decoder: %w", err)
	}
	defer dec.Close()
	r.dec = dec

	// Zero blocks first, runs of them at once; then the data blocks, each
	// distinct block fetched once.
	var fetches []*fetch
	byHash := make(map[Hash]*fetch)
	n := int64(len(r.m.Blocks))
	for i := int64(0); i < n; i++ {
		h := r.m.Blocks[i]
		if h.IsZero() {
			end := i + 1
			for end < n && r.m.Blocks[end].IsZero() {
				end++
			}
			if err := r.zeroRun(i, end); err != nil {
				return err
			}
			i = end - 1
			continue
		}
		f := byHash[h]
		if f == nil {
			f = &fetch{hash: h}
			byHash[h] = f
			fetches = append(fetches, f)
		}
		f.indexes = append(f.indexes, i)
	}

	work := make(chan *fetch)
	var wg sync.WaitGroup
	for range r.spec.Parallel {
		wg.Go(func() {
			var cbuf, dbuf []byte
			for f := range work {
				if ctx.Err() != nil {
					continue
				}
				if err := r.restoreBlock(ctx, f, &cbuf, &dbuf); err != nil {
					cancel(err)
				}
			}
		})
	}
	for _, f := range fetches {
		select {
		case work <- f:
			continue
		case <-ctx.Done():
		}
		break
	}
	close(work)
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// restoreBlock fetches, verifies and writes one distinct block.
func (r *restorer) restoreBlock(ctx context.Context, f *fetch, cbuf, dbuf *[]byte) error {
	first := f.indexes[0]
	key := r.v.blockKey(f.hash)
	length := r.m.BlockLen(first)
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("block %d (key %s): "+format+": %w", append([]any{first, key}, append(args, ErrCorrupt)...)...)
	}
	rc, err := r.spec.Store.Get(ctx, key)
	if errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("block %d (key %s) is missing from the repository: %w: %w", first, key, ErrCorrupt, err)
	}
	if err != nil {
		return fmt.Errorf("fetch block %d (key %s): %w", first, key, err)
	}
	limit := compressBound(r.m.BlockSize) + 64<<10
	if *cbuf == nil {
		*cbuf = make([]byte, 0, compressBound(r.m.BlockSize))
	}
	c, err := readAllInto((*cbuf)[:0], io.LimitReader(rc, limit+1))
	rc.Close()
	*cbuf = c
	if err != nil {
		return fmt.Errorf("fetch block %d (key %s): %w", first, key, err)
	}
	if int64(len(c)) > limit {
		return corrupt("compressed block is larger than any block of %d bytes compresses to", r.m.BlockSize)
	}
	if *dbuf == nil {
		*dbuf = make([]byte, 0, r.m.BlockSize)
	}
	d, err := r.dec.DecodeAll(c, (*dbuf)[:0])
	if err != nil {
		return corrupt("cannot decompress: %v", err)
	}
	*dbuf = d
	if int64(len(d)) != length {
		return corrupt("decompresses to %d bytes, the block has %d", len(d), length)
	}
	if got := Hash(sha256.Sum256(d)); got != f.hash {
		return corrupt("content hash is %s, the manifest says %s", got, f.hash)
	}
	for _, i := range f.indexes {
		if r.m.BlockLen(i) != length {
			return fmt.Errorf("block %d (key %s): same hash as block %d but of another length: %w", i, key, first, ErrCorrupt)
		}
		if _, err := r.spec.Target.WriteAt(d, i*r.m.BlockSize); err != nil {
			return fmt.Errorf("write block %d at offset %d: %w", i, i*r.m.BlockSize, err)
		}
		r.account(length, length, 0)
	}
	r.mu.Lock()
	r.stats.BytesDownloaded += int64(len(c))
	r.stats.BlocksFetched++
	r.mu.Unlock()
	return nil
}

func readAllInto(b []byte, r io.Reader) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}

// zeroRun puts the zero blocks [first, end) into the target as spec.Zero
// says: one hole for the whole run, or zeros written block by block.
func (r *restorer) zeroRun(first, end int64) error {
	off := first * r.m.BlockSize
	length := min(end*r.m.BlockSize, r.m.VolumeSize) - off
	mode := r.spec.Zero
	if mode == ZeroSkip {
		r.account(length, 0, length)
		return nil
	}
	if mode == ZeroAuto || mode == ZeroPunch {
		err := r.punch(off, length)
		if err == nil {
			r.account(length, 0, length)
			return nil
		}
		if mode == ZeroPunch || !errPunchUnsupported(err) && !errors.Is(err, errNoPuncher) {
			return fmt.Errorf("punch a hole for zero blocks %d to %d at offset %d: %w", first, end-1, off, err)
		}
	}
	r.zeroOnce.Do(func() { r.zeroBuf = make([]byte, r.m.BlockSize) })
	for i := first; i < end; i++ {
		bl := r.m.BlockLen(i)
		if _, err := r.spec.Target.WriteAt(r.zeroBuf[:bl], i*r.m.BlockSize); err != nil {
			return fmt.Errorf("write zero block %d at offset %d: %w", i, i*r.m.BlockSize, err)
		}
		r.account(bl, bl, bl)
	}
	return nil
}

var errNoPuncher = fmt.Errorf("the target cannot punch holes: %w", errdefs.ErrInvalid)

func (r *restorer) punch(off, length int64) error {
	if p, ok := r.spec.Target.(HolePuncher); ok {
		return p.PunchHole(off, length)
	}
	if r.file != nil {
		return punchHole(r.file, off, length)
	}
	return errNoPuncher
}

func (r *restorer) account(n, written, zero int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.BytesWritten += written
	r.stats.BytesZero += zero
	r.done += n
	if r.progress != nil {
		r.progress(r.done, r.m.VolumeSize)
	}
}
