// Package e2e holds Tessera's end-to-end tests. TestMain starts one local
// cluster (e2e/cluster: real etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, a real containerd + kubelet node and kwok-simulated GPU
// nodes) for all tests of the package, and checks after the last test that
// tearing it down leaves no process and no state behind.
//
// The Makefile (make test-e2e) sets TESSERA_TOOLS_DIR and TESSERA_BIN_DIR;
// the tests need root. The API server always runs with the GenericWorkload
// and TopologyAwareWorkloadScheduling gates on; the tessera-scheduler runs
// with its gates at their defaults (off) unless TESSERA_E2E_SCHEDULER_GATES
// is set, e.g.
//
//	TESSERA_E2E_SCHEDULER_GATES=GenericWorkload=true,TopologyAwareWorkloadScheduling=true make test-e2e
//
// which adds --feature-gates=<value> to its container (cluster.InstallTessera).
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tessera-gpu/tessera/e2e/cluster"
)

const simulatedNodes = 8

var (
	testCluster *cluster.Cluster
	keepCluster = flag.Bool("keep-cluster", false, "leave the cluster running after the tests (debugging)")
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	tools, bin := os.Getenv("TESSERA_TOOLS_DIR"), os.Getenv("TESSERA_BIN_DIR")
	if tools == "" || bin == "" {
		fmt.Println("e2e: TESSERA_TOOLS_DIR and TESSERA_BIN_DIR are not set; run the end-to-end tests with `make test-e2e` (needs root)")
		return 1
	}
	dir, err := os.MkdirTemp("", "tessera-e2e-")
	if err != nil {
		fmt.Println("e2e:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := cluster.Up(ctx, cluster.Config{
		Dir:              dir,
		ToolsDir:         tools,
		RealNode:         true,
		DefaultScheduler: true,
		// The real node runs on containerd v2 (make tools);
		// TESSERA_CONTAINERD=1.6 runs it on Debian's containerd 1.6.
		Containerd:     os.Getenv("TESSERA_CONTAINERD"),
		PauseBinary:    filepath.Join(bin, "tessera-pause"),
		Images:         cluster.DefaultImages(bin),
		SimulatedNodes: simulatedNodes,
		Topology:       cluster.Topology{NodesPerClique: 4, CliquesPerRack: 1, RacksPerZone: 2},
		GPUs:           &cluster.SimulatedGPUs{Count: 8, SlicesPerGPU: 4, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, NVLink: "all"},
		Progress: func(format string, args ...any) {
			fmt.Printf("e2e: cluster: %s\n", fmt.Sprintf(format, args...))
		},
	})
	if err != nil {
		fmt.Println("e2e: starting the local cluster:", err)
		_ = os.RemoveAll(dir)
		return 1
	}
	fmt.Printf("e2e: cluster up in %s (KUBECONFIG=%s)\n", time.Since(start).Round(time.Second), c.Kubeconfig)
	testCluster = c
	code := 1
	start = time.Now()
	if err := c.InstallTessera(ctx, "../manifests/overlays/local"); err != nil {
		fmt.Println("e2e: installing Tessera from manifests/overlays/local:", err)
	} else {
		fmt.Printf("e2e: Tessera installed and ready in %s\n", time.Since(start).Round(100*time.Millisecond))
		code = m.Run()
	}
	if *keepCluster {
		fmt.Printf("e2e: cluster left running in %s\n", dir)
		return code
	}
	pids := clusterPIDs(dir)
	if err := c.Down(); err != nil {
		fmt.Println("e2e: tearing the cluster down:", err)
		return 1
	}
	if left := stillRunning(pids, dir); len(left) > 0 {
		fmt.Printf("e2e: FAIL: processes left behind after teardown: %v\n", left)
		return 1
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		fmt.Printf("e2e: FAIL: %s still exists after teardown\n", dir)
		return 1
	}
	fmt.Printf("e2e: teardown left no process (%d checked) and no state behind\n", len(pids))
	return code
}

// processes lists the PIDs of the machine's processes whose command line
// (argv, split at NULs) match accepts.
func processes(match func(pid int, args []string) bool) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if match(pid, strings.Split(string(cmdline), "\x00")) {
			out = append(out, pid)
		}
	}
	return out
}

// clusterPIDs lists every process that belongs to the cluster: those the
// harness started and the containers and shims under them.
func clusterPIDs(dir string) []int {
	return processes(func(pid int, _ []string) bool { return belongs(pid, dir) })
}

func belongs(pid int, dir string) bool {
	if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); err == nil && strings.HasPrefix(root, dir+"/") {
		return true
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(cmdline), dir)
}

func stillRunning(pids []int, dir string) []string {
	var left []string
	for _, pid := range pids {
		if belongs(pid, dir) {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			left = append(left, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(cmd), "\x00", " ")))
		}
	}
	// Anything new that appeared during teardown counts too.
	for _, pid := range clusterPIDs(dir) {
		left = append(left, fmt.Sprintf("%d (new)", pid))
	}
	return left
}
