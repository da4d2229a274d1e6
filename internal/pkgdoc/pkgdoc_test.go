package pkgdoc

import (
	"go/build"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEveryPackageHasAComment walks the module and fails for each package
// (a directory's Go files for this platform) whose files all lack a package
// comment. A directory with only _test.go files must document the package
// in one of those.
func TestEveryPackageHasAComment(t *testing.T) {
	root := moduleRoot(t)
	checked := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if path != root && skipDir(d.Name()) {
			return filepath.SkipDir
		}
		if path != root {
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
				return filepath.SkipDir // another module
			}
		}
		pkg, documented, ok := checkDir(t, path)
		if !ok {
			return nil
		}
		checked++
		if !documented {
			rel, _ := filepath.Rel(root, path)
			example := "// Package " + pkg + " ..."
			if pkg == "main" {
				example = "// Command " + filepath.Base(path) + " ..."
			}
			t.Errorf("package %s in ./%s has no package comment; add one to one of its files: %s",
				pkg, filepath.ToSlash(rel), example)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatalf("found no Go packages under %s", root)
	}
}

// skipDir reports directories the Go tool ignores or that hold no source:
// hidden ones, _-prefixed ones, testdata, vendor, and the bin and var
// outputs of make.
func skipDir(name string) bool {
	switch name {
	case "testdata", "vendor", "bin", "var":
		return true
	}
	return strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")
}

// checkDir reports the package in dir and whether one of its files has a
// package comment; ok is false when dir has no Go files for this platform.
func checkDir(t *testing.T, dir string) (pkg string, documented, ok bool) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files, testFiles []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") {
			continue
		}
		if match, err := build.Default.MatchFile(dir, name); err != nil {
			t.Fatal(err)
		} else if !match {
			continue
		}
		if strings.HasSuffix(name, "_test.go") {
			testFiles = append(testFiles, name)
		} else {
			files = append(files, name)
		}
	}
	if len(files) == 0 {
		files = testFiles
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f.Name.Name, "_test") {
			continue // the external test package documents nothing
		}
		ok = true
		pkg = f.Name.Name
		if f.Doc != nil && strings.TrimSpace(f.Doc.Text()) != "" {
			return pkg, true, true
		}
	}
	return pkg, false, ok
}

func moduleRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
