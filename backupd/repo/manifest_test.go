package repo

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func hashOf(s string) Hash {
	h, err := ParseHash(s)
	if err != nil {
		panic(err)
	}
	return h
}

// exampleManifest is the manifest of testdata/manifest-v1.json and of the
// example in docs/backup-format.md.
func exampleManifest() *Manifest {
	return &Manifest{
		Version:     1,
		BackupID:    "5e7c0b6a-1f1e-4d53-9f0e-3c1f2b8e9a10",
		VolumeID:    "0b8d2f64-3a63-4c9b-8d7e-6f1a2b3c4d5e",
		ParentID:    "a3b9c1d2-0e4f-4a5b-9c6d-7e8f9a0b1c2d",
		CreatedAt:   time.Date(2026, 11, 22, 3, 4, 5, 123456789, time.UTC),
		VolumeSize:  10485760 + 1000,
		BlockSize:   4194304,
		Compression: "zstd",
		Blocks: []Hash{
			hashOf("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
			{},
			hashOf("60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"),
		},
	}
}

// TestManifestGolden pins the encoding of format v1: a change to it breaks
// every existing repository. Run with -update only for a new format
// version.
func TestManifestGolden(t *testing.T) {
	got, err := exampleManifest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "manifest-v1.json")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update once to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("encoding differs from %s (-want +got):\n%s", golden, diff)
	}
	m, err := DecodeManifest(want)
	if err != nil {
		t.Fatalf("DecodeManifest(golden): %v", err)
	}
	if diff := cmp.Diff(exampleManifest(), m); diff != "" {
		t.Errorf("decoded golden manifest (-want +got):\n%s", diff)
	}
}

// TestDocExample keeps the manifest example of docs/backup-format.md true:
// it must decode and equal the golden manifest.
func TestDocExample(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "backup-format.md"))
	if err != nil {
		t.Fatal(err)
	}
	golden, err := os.ReadFile(filepath.Join("testdata", "manifest-v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(doc, bytes.TrimSpace(golden)) {
		t.Fatalf("docs/backup-format.md does not show testdata/manifest-v1.json verbatim; copy it into the example")
	}
}

func TestDecodeManifestRejects(t *testing.T) {
	good, err := exampleManifest().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) []byte {
		if !bytes.Contains(good, []byte(old)) {
			t.Fatalf("test bug: %q not in manifest", old)
		}
		return bytes.Replace(good, []byte(old), []byte(new), 1)
	}
	// remarshal re-encodes a changed manifest with a correct checksum, to
	// reach the checks behind the checksum.
	remarshal := func(change func(w *manifestJSON)) []byte {
		var in manifestIn
		if err := jsonUnmarshal(good, &in); err != nil {
			t.Fatal(err)
		}
		w, err := in.complete()
		if err != nil {
			t.Fatal(err)
		}
		change(w)
		w.Checksum = checksum(w)
		data, err := jsonMarshal(w)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not valid JSON"},
		{"truncated", good[:len(good)/2], "not valid JSON"},
		{"truncated by one", good[:len(good)-2], "not valid JSON"},
		{"not an object", []byte(`[1,2]`), "not valid JSON"},
		{"other format", replace(`"format":"bulkhead-backup"`, `"format":"restic"`), `format is "restic"`},
		{"newer version", replace(`"version":1`, `"version":2`), "format version 2 is not supported"},
		{"flipped hash digit", replace("9f86d0", "9f86d1"), "checksum mismatch"},
		{"changed size", replace(`"volume_size":10486760`, `"volume_size":10486761`), "checksum mismatch"},
		{"unknown member", replace(`"hash":"sha256"`, `"hash":"sha256","extra":1`), "unknown field"},
		{"trailing data", append(append([]byte{}, good...), []byte(`{}`)...), "after top-level value"},
		{"missing member", remarshalWithout(t, good, "parent_id"), `"parent_id" is missing`},
		{"null blocks", replace(`"blocks":[`, `"blocks":null,"x":[`), "unknown field"},
		{"upper-case hash", remarshal(func(w *manifestJSON) { w.Blocks[0] = strings.ToUpper(w.Blocks[0]) }), "0-9 a-f"},
		{"short hash", remarshal(func(w *manifestJSON) { w.Blocks[0] = "abc" }), "not 64 hex"},
		{"all-zero hash", remarshal(func(w *manifestJSON) { w.Blocks[0] = strings.Repeat("0", 64) }), "reserved"},
		{"too few blocks", remarshal(func(w *manifestJSON) { w.Blocks = w.Blocks[:2] }), "needs 3"},
		{"too many blocks", remarshal(func(w *manifestJSON) { w.Blocks = append(w.Blocks, "") }), "needs 3"},
		{"odd block size", remarshal(func(w *manifestJSON) { w.BlockSize = 4194305 }), "block size"},
		{"negative size", remarshal(func(w *manifestJSON) { w.VolumeSize = -1 }), "out of range"},
		{"huge size", remarshal(func(w *manifestJSON) { w.VolumeSize = 1 << 62 }), "out of range"},
		{"other compression", remarshal(func(w *manifestJSON) { w.Compression = "gzip" }), "compression"},
		{"other hash", remarshal(func(w *manifestJSON) { w.Hash = "md5" }), `hash "md5"`},
		{"bad id", remarshal(func(w *manifestJSON) { w.BackupID = "../x" }), "backup id"},
		{"own parent", remarshal(func(w *manifestJSON) { w.ParentID = w.BackupID }), "own parent"},
		{"bad time", remarshal(func(w *manifestJSON) { w.CreatedAt = "yesterday" }), "created_at"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := DecodeManifest(tc.data)
			if err == nil {
				t.Fatalf("DecodeManifest accepted it: %+v", m)
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v; want ErrCorrupt mentioning %q", err, tc.want)
			}
		})
	}
}

func remarshalWithout(t *testing.T, data []byte, member string) []byte {
	t.Helper()
	var raw map[string]any
	if err := jsonUnmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	delete(raw, member)
	out, err := jsonMarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestManifestRoundTrip(t *testing.T) {
	for _, size := range []int64{0, 1, MinBlockSize - 1, MinBlockSize, MinBlockSize + 1, 10 * MinBlockSize} {
		m := &Manifest{Version: 1, BackupID: "b", VolumeID: "v", CreatedAt: time.Unix(1, 0).UTC(),
			VolumeSize: size, BlockSize: MinBlockSize, Compression: "zstd",
			Blocks: make([]Hash, NumBlocks(size, MinBlockSize))}
		for i := range m.Blocks {
			if i%2 == 0 {
				m.Blocks[i][0], m.Blocks[i][31] = byte(i), 1
			}
		}
		data, err := m.Marshal()
		if err != nil {
			t.Fatalf("size %d: Marshal: %v", size, err)
		}
		got, err := DecodeManifest(data)
		if err != nil {
			t.Fatalf("size %d: DecodeManifest: %v", size, err)
		}
		if diff := cmp.Diff(m, got); diff != "" {
			t.Fatalf("size %d: round trip (-want +got):\n%s", size, diff)
		}
	}
}

// FuzzManifest feeds DecodeManifest arbitrary bytes. It must never panic,
// and whatever it accepts must be valid and survive a round trip.
func FuzzManifest(f *testing.F) {
	good, err := exampleManifest().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte(`{"format":"bulkhead-backup","version":1}`))
	f.Add([]byte(`{"format":"bulkhead-backup","version":1,"backup_id":"b","volume_id":"v","parent_id":"",` +
		`"created_at":"2026-01-01T00:00:00Z","volume_size":0,"block_size":4096,"compression":"zstd",` +
		`"hash":"sha256","blocks":[],"checksum":""}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"blocks":[""]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeManifest(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted an invalid manifest: %v", err)
		}
		again, err := m.Marshal()
		if err != nil {
			t.Fatalf("cannot re-encode an accepted manifest: %v", err)
		}
		m2, err := DecodeManifest(again)
		if err != nil {
			t.Fatalf("re-encoded manifest does not decode: %v", err)
		}
		if diff := cmp.Diff(m, m2); diff != "" {
			t.Fatalf("round trip changed the manifest (-first +second):\n%s", diff)
		}
	})
}
