package objstore

import (
	"errors"
	"fmt"
	"io"
)

// ExactReader returns a reader that delivers the size bytes of r and then
// io.EOF, and fails with an error wrapping ErrSizeMismatch if r ends early
// or has more than size bytes. It probes for the extra byte before handing
// out the last ones, so an HTTP upload that streams from it is aborted
// before its request body is complete, and the server never commits a
// truncated object. Implementations of Put use it.
func ExactReader(r io.Reader, size int64) io.Reader {
	return &exactReader{r: r, left: size, size: size}
}

type exactReader struct {
	r    io.Reader
	left int64
	size int64
	err  error
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	if e.left == 0 {
		if err := e.probe(); err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	switch {
	case err == io.EOF && e.left > 0:
		e.err = fmt.Errorf("reader ended after %d of %d bytes: %w", e.size-e.left, e.size, ErrSizeMismatch)
		return n, e.err
	case err != nil && err != io.EOF:
		e.err = err
		return n, err
	}
	if e.left == 0 {
		if perr := e.probe(); perr != nil {
			return n, perr
		}
	}
	return n, nil
}

// probe checks that r has nothing left after size bytes.
func (e *exactReader) probe() error {
	var one [1]byte
	for range 100 {
		n, err := e.r.Read(one[:])
		if n > 0 {
			e.err = fmt.Errorf("reader has more than %d bytes: %w", e.size, ErrSizeMismatch)
			return e.err
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			e.err = err
			return err
		}
	}
	e.err = io.ErrNoProgress
	return e.err
}
