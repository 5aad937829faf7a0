package scheduler_bench

import (
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	_ "k8s.io/component-base/logs/json/register"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	perf "k8s.io/kubernetes/test/integration/scheduler_perf"

	"github.com/tessera-gpu/tessera/scheduler"
)

// recordsPath is where every workload appends one JSON Record (one line);
// the report command turns them into bench/results/<date>.md.
var recordsPath = flag.String("tessera-records", "", "append one JSON line per workload (Record) to this file")

func TestMain(m *testing.M) {
	if err := perf.InitTests(); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// registry is the out-of-tree registry scheduler_perf hands to the
// scheduler: Tessera by its factory, exactly as cmd/tessera-scheduler does.
func registry() frameworkruntime.Registry {
	return frameworkruntime.Registry{scheduler.Name: scheduler.New}
}

// BenchmarkPerfScheduling runs every test case of performance-config.yaml
// whose workload labels pass -perf-scheduling-label-filter (smoke, quick or
// full): each Tessera test case and its baseline in the same invocation.
func BenchmarkPerfScheduling(b *testing.B) {
	if _, err := os.Stat(etcdOnPath()); err != nil {
		b.Skipf("etcd is not on PATH (make tools builds .tools/etcd): %v", err)
	}
	perf.PluginNames = append(perf.PluginNames, scheduler.Name)
	perf.RunBenchmarkPerfScheduling(b, "performance-config.yaml", "tessera", registry(),
		perf.WithPrepareFn(startCollector),
		perf.WithPodsSchedulingTimeout(20*time.Minute))
}
