// Package integration tests the Tessera scheduler plugin in-process against
// a real kube-apiserver and etcd with kwok-simulated GPU nodes (see
// e2e/cluster). Run through `make test-unit`, which sets TESSERA_TOOLS_DIR.
package integration
