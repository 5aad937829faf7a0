package scheduler_bench

import (
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/component-base/featuregate"
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/kubernetes/pkg/features"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	schedmetrics "k8s.io/kubernetes/pkg/scheduler/metrics"
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
	if err := registerPodGroupMetrics(); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// registerPodGroupMetrics registers the scheduler's metrics with the gang
// gates on. kube-scheduler registers its metrics once per process, and the
// pod-group cycle's (scheduler_podgroup_scheduling_*) only if GenericWorkload
// is on at that moment; scheduler_perf runs every workload in one process,
// the first (SchedulingBasic) with the gates off, so the gang workloads
// after it would have none. The gates are restored at once: each workload
// still runs with its own featureGates, and a workload with the gates off
// never observes these metrics.
func registerPodGroupMetrics() error {
	gates := []featuregate.Feature{features.GenericWorkload, features.TopologyAwareWorkloadScheduling}
	before, on := map[string]bool{}, map[string]bool{}
	for _, g := range gates {
		before[string(g)] = utilfeature.DefaultFeatureGate.Enabled(g)
		on[string(g)] = true
	}
	if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(on); err != nil {
		return fmt.Errorf("turning the gang gates on to register the pod-group metrics: %w", err)
	}
	schedmetrics.Register()
	if err := utilfeature.DefaultMutableFeatureGate.SetFromMap(before); err != nil {
		return fmt.Errorf("restoring the gang gates: %w", err)
	}
	return nil
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
