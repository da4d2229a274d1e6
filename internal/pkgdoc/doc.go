// Package pkgdoc only holds a test: every Go package in the repository,
// commands included, must have a package comment saying what it is for.
package pkgdoc
