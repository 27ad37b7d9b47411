//go:build tools

// Package tools pins the etcd server the testbed builds, so that `go mod tidy`
// keeps it in go.mod and go.sum.
package tools

import _ "go.etcd.io/etcd/server/v3"
