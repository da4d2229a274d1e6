// Package version holds the version string every Bulkhead binary reports.
//
// Release and development builds set it at link time; `make build` passes
//
//	-ldflags "-X github.com/bulkhead-io/bulkhead/internal/version.Version=$(git describe --always --dirty)"
//
// A plain `go build` leaves the default.
package version

// Version is the version of this build.
var Version = "0.1.0-dev"
