package faulty_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/faulty"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/mem"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/storetest"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Without faults the wrapper must keep the contract.
func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) objstore.Store { return faulty.New(mem.New(t.Name())) })
}

func TestFailNthPut(t *testing.T) {
	s := faulty.New(mem.New("t"))
	s.FailNthPut(3, faulty.HasPrefix("blocks/"))
	var got []string
	for i := range 5 {
		for _, dir := range []string{"other", "blocks"} {
			key := fmt.Sprintf("%s/%d", dir, i)
			err := s.Put(t.Context(), key, strings.NewReader("x"), 1)
			if err != nil {
				if !errors.Is(err, errdefs.ErrUnavailable) {
					t.Errorf("Put(%s) error = %v, want ErrUnavailable", key, err)
				}
				got = append(got, key)
			}
		}
	}
	if len(got) != 1 || got[0] != "blocks/2" {
		t.Fatalf("failed puts = %v, want [blocks/2]", got)
	}
	if _, err := s.Stat(t.Context(), "blocks/2"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("the failed Put stored the object")
	}
	if n := s.Calls(faulty.OpPut); n != 10 {
		t.Fatalf("Calls(put) = %d, want 10", n)
	}
}

func TestCorruptGets(t *testing.T) {
	s := faulty.New(mem.New("t"))
	data := bytes.Repeat([]byte{0xaa}, 100)
	for _, k := range []string{"a", "b"} {
		if err := s.Put(t.Context(), k, bytes.NewReader(data), 100); err != nil {
			t.Fatal(err)
		}
	}
	s.CorruptGets(func(k string) bool { return k == "a" })
	read := func(k string) []byte {
		rc, err := s.Get(t.Context(), k)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for range 2 {
		if bytes.Equal(read("a"), data) {
			t.Fatal("Get(a) was not corrupted")
		}
	}
	if !bytes.Equal(read("b"), data) {
		t.Fatal("Get(b) was corrupted")
	}
	if !bytes.Equal(read("a"), read("a")) {
		t.Fatal("corruption is not repeatable")
	}
}

func TestHookPass(t *testing.T) {
	s := faulty.New(mem.New("t"))
	var hooked []string
	s.Inject(faulty.Fault{Op: faulty.OpDelete, Times: 2, Hook: func(k string) { hooked = append(hooked, k) }, Pass: true})
	for _, k := range []string{"x", "y", "z"} {
		if err := s.Delete(t.Context(), k); err != nil {
			t.Fatalf("Delete(%s) = %v, want nil (Pass)", k, err)
		}
	}
	if strings.Join(hooked, ",") != "x,y" {
		t.Fatalf("hook ran for %v, want [x y]", hooked)
	}
}
