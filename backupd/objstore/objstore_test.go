package objstore_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

func TestValidKey(t *testing.T) {
	tests := []struct {
		key   string
		valid bool
	}{
		{"a", true},
		{"c/v1/volumes/v/blocks/ab/ab12", true},
		{"with space and ünïcode", true},
		{strings.Repeat("k", objstore.MaxKeyLen), true},
		{"", false},
		{"/a", false},
		{"a/", false},
		{"a//b", false},
		{".", false},
		{"a/./b", false},
		{"a/..", false},
		{"tab\there", false},
		{"del\x7f", false},
		{"\xff", false},
		{strings.Repeat("k", objstore.MaxKeyLen+1), false},
	}
	for _, tc := range tests {
		err := objstore.ValidKey(tc.key)
		if tc.valid != (err == nil) {
			t.Errorf("ValidKey(%q) = %v, want valid=%v", tc.key, err, tc.valid)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ValidKey(%q) = %v, want ErrInvalid", tc.key, err)
		}
	}
	for _, p := range []string{"", "a/", "a/b", "a/b/"} {
		if err := objstore.ValidPrefix(p); err != nil {
			t.Errorf("ValidPrefix(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"/", "a//", "/a"} {
		if err := objstore.ValidPrefix(p); err == nil {
			t.Errorf("ValidPrefix(%q) = nil, want an error", p)
		}
	}
}

func TestExactReader(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 1000)
	boom := errors.New("boom")
	tests := []struct {
		name string
		r    io.Reader
		size int64
		want error
	}{
		{"exact", bytes.NewReader(data), int64(len(data)), nil},
		{"exact one byte at a time", iotest.OneByteReader(bytes.NewReader(data)), int64(len(data)), nil},
		{"empty", bytes.NewReader(nil), 0, nil},
		{"short", bytes.NewReader(data), int64(len(data)) + 1, objstore.ErrSizeMismatch},
		{"long", bytes.NewReader(data), int64(len(data)) - 1, objstore.ErrSizeMismatch},
		{"long by one, zero size", bytes.NewReader([]byte{1}), 0, objstore.ErrSizeMismatch},
		{"reader error", io.MultiReader(bytes.NewReader(data[:10]), iotest.ErrReader(boom)), 100, boom},
	}
	for _, tc := range tests {
		got, err := io.ReadAll(objstore.ExactReader(tc.r, tc.size))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: error = %v, want %v", tc.name, err, tc.want)
		}
		if tc.want == nil && int64(len(got)) != tc.size {
			t.Errorf("%s: read %d bytes, want %d", tc.name, len(got), tc.size)
		}
		if tc.want == objstore.ErrSizeMismatch && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: error = %v, want ErrInvalid too", tc.name, err)
		}
	}
}
