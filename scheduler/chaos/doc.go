// Package chaos holds Tessera's scheduler reliability tests on a
// control-plane-only local cluster with (by default) 1000 simulated GPU
// nodes: leader failover between two in-process replicas under a stream of
// gangs, and a bounded load run of gangs and single pods created and deleted
// continuously. Each test records its figures (see docs/reliability.md).
//
// Settings: TESSERA_LOAD_NODES (1000), TESSERA_LOAD_DURATION (1m; make
// reliability: 10m), TESSERA_LOAD_WORKERS (24), TESSERA_RELIABILITY_OUT (a
// file the figures are appended to).
package chaos
