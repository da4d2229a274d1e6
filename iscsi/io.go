package iscsi

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// ReadCapacity returns the number of blocks of lun and their size (READ
// CAPACITY(16)). It also remembers the block size for ReadAt and WriteAt.
func (s *Session) ReadCapacity(ctx context.Context, lun uint64) (blocks uint64, blockSize uint32, err error) {
	buf := make([]byte, readCapacity16Len)
	res, err := s.scsi(ctx, lun, readCapacity16CDB(), buf, true, false)
	if err != nil {
		return 0, 0, err
	}
	if res.received < 12 {
		return 0, 0, fmt.Errorf("%w: iscsi: READ CAPACITY(16) LUN %d returned %d bytes, fewer than 12", errProtocol, lun, res.received)
	}
	last := binary.BigEndian.Uint64(buf)
	blockSize = binary.BigEndian.Uint32(buf[8:])
	if blockSize == 0 || last == ^uint64(0) {
		return 0, 0, fmt.Errorf("%w: iscsi: READ CAPACITY(16) LUN %d: last LBA %d, block size %d", errProtocol, lun, last, blockSize)
	}
	s.mu.Lock()
	s.blockSize[lun] = blockSize
	s.mu.Unlock()
	return last + 1, blockSize, nil
}

func (s *Session) blockSizeOf(ctx context.Context, lun uint64) (int, error) {
	s.mu.Lock()
	bs, ok := s.blockSize[lun]
	s.mu.Unlock()
	if ok {
		return int(bs), nil
	}
	_, bs, err := s.ReadCapacity(ctx, lun)
	return int(bs), err
}

// ReadAt reads len(p) bytes of lun at byte offset off (READ(16)). off and
// len(p) must be multiples of the LUN's block size (errdefs.ErrInvalid
// otherwise; the block size comes from ReadCapacity, which ReadAt calls
// first if it has not been). Reads longer than the negotiated
// MaxBurstLength are split into several commands with up to
// Config.MaxInFlight of them in flight. Reading past the end of the LUN
// fails with a *SCSIError (ILLEGAL REQUEST, LBA out of range). On error,
// n counts the bytes before the first chunk that failed.
func (s *Session) ReadAt(ctx context.Context, lun uint64, p []byte, off int64) (n int, err error) {
	return s.transfer(ctx, lun, p, off, false)
}

// WriteAt writes p to lun at byte offset off (WRITE(16)), with the same
// alignment rule, splitting and error counting as ReadAt. Data goes as
// immediate data, unsolicited Data-Out and Data-Out answering the target's
// R2Ts, as negotiated (ImmediateData, InitialR2T, FirstBurstLength). A
// write whose context ends returns at once but is completed in the
// background from a copy of its data, so the range may still be written.
func (s *Session) WriteAt(ctx context.Context, lun uint64, p []byte, off int64) (n int, err error) {
	return s.transfer(ctx, lun, p, off, true)
}

func (s *Session) transfer(ctx context.Context, lun uint64, p []byte, off int64, write bool) (int, error) {
	op, name := byte(opRead16), "ReadAt"
	if write {
		op, name = opWrite16, "WriteAt"
	}
	if err := s.usable(); err != nil {
		return 0, err
	}
	bs, err := s.blockSizeOf(ctx, lun)
	if err != nil {
		return 0, err
	}
	if off < 0 || off%int64(bs) != 0 || len(p)%bs != 0 {
		return 0, fmt.Errorf("%w: iscsi: %s LUN %d: offset %d and length %d must be multiples of the block size %d",
			errdefs.ErrInvalid, name, lun, off, len(p), bs)
	}
	if len(p) == 0 {
		return 0, nil
	}
	chunk := max(s.params.maxBurst/bs*bs, bs)
	count := (len(p) + chunk - 1) / chunk
	one := func(ctx context.Context, i int) error {
		start := i * chunk
		end := min(start+chunk, len(p))
		lba := uint64(off/int64(bs)) + uint64(start/bs)
		buf := p[start:end]
		_, err := s.scsi(ctx, lun, rwCDB(op, lba, uint32(len(buf)/bs)), buf, !write, write)
		return err
	}
	if count == 1 {
		if err := one(ctx, 0); err != nil {
			return 0, err
		}
		return len(p), nil
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		failed   = make([]bool, count)
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	for range min(count, s.cfg.MaxInFlight) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= count {
					return
				}
				if ctx.Err() != nil {
					failed[i] = true
					continue
				}
				if err := one(ctx, i); err != nil {
					failed[i] = true
					errOnce.Do(func() { firstErr = err })
					cancel()
				}
			}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = fmt.Errorf("iscsi: %s LUN %d: %w", name, lun, context.Cause(ctx))
	}
	for i, f := range failed {
		if f {
			return i * chunk, firstErr
		}
	}
	return len(p), nil
}

// Disk is one LUN of a session as an io.ReaderAt and io.WriterAt with a
// size. Its reads and writes have no context: each command is bounded by
// Config.Timeout. Offsets and lengths must be multiples of BlockSize.
type Disk struct {
	s         *Session
	lun       uint64
	size      int64
	blockSize int
}

var (
	_ io.ReaderAt = (*Disk)(nil)
	_ io.WriterAt = (*Disk)(nil)
)

// LUN returns lun as a Disk, asking the target its size.
func (s *Session) LUN(ctx context.Context, lun uint64) (*Disk, error) {
	blocks, bs, err := s.ReadCapacity(ctx, lun)
	if err != nil {
		return nil, err
	}
	return &Disk{s: s, lun: lun, size: int64(blocks) * int64(bs), blockSize: int(bs)}, nil
}

// Size is the LUN's size in bytes.
func (d *Disk) Size() int64 { return d.size }

// BlockSize is the LUN's logical block size in bytes.
func (d *Disk) BlockSize() int { return d.blockSize }

// ReadAt reads as io.ReaderAt says: a read that reaches the end of the LUN
// returns the bytes up to it and io.EOF.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if off >= d.size && len(p) > 0 {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > d.size-off {
		p, eof = p[:d.size-off], io.EOF
	}
	n, err := d.s.ReadAt(context.Background(), d.lun, p, off)
	if err != nil {
		return n, err
	}
	return n, eof
}

// WriteAt writes p at off; a write that would pass the end of the LUN
// writes nothing and fails with errdefs.ErrInvalid.
func (d *Disk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || int64(len(p)) > d.size-off {
		return 0, fmt.Errorf("%w: iscsi: write of %d bytes at %d passes the end of LUN %d (%d bytes)",
			errdefs.ErrInvalid, len(p), off, d.lun, d.size)
	}
	return d.s.WriteAt(context.Background(), d.lun, p, off)
}
