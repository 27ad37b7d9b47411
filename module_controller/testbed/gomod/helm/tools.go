//go:build tools

// Package tools pins the helm command the tests build, so that `go mod tidy`
// keeps helm.sh/helm/v3 in go.mod and go.sum.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
