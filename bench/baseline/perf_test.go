// Package baseline runs the shapes of bench/scheduler against
// sigs.k8s.io/scheduler-plugins coscheduling v0.34.7 on Kubernetes 1.34.4's
// scheduler_perf. It is its own Go module because scheduler-plugins v0.34.7
// only builds against Kubernetes 1.34, while Tessera uses 1.37.
//
//	cd bench/baseline && PATH=$PWD/../../.tools:$PATH go test . -run '^$' \
//	    -bench . -perf-scheduling-label-filter=quick -tessera-records /tmp/r.jsonl
package baseline

import (
	"flag"
	"fmt"
	"os"
	"testing"

	_ "k8s.io/component-base/logs/json/register"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	perf "k8s.io/kubernetes/test/integration/scheduler_perf"
	_ "sigs.k8s.io/scheduler-plugins/apis/config/scheme"
	"sigs.k8s.io/scheduler-plugins/pkg/coscheduling"
)

var recordsPath = flag.String("tessera-records", "", "append one JSON line per workload (Record) to this file")

func TestMain(m *testing.M) {
	if err := perf.InitTests(); err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func BenchmarkPerfScheduling(b *testing.B) {
	if _, err := os.Stat(etcdOnPath()); err != nil {
		b.Skipf("etcd is not on PATH (make tools builds .tools/etcd): %v", err)
	}
	perf.PluginNames = append(perf.PluginNames, coscheduling.Name)
	perf.RunBenchmarkPerfScheduling(b, "performance-config.yaml", "coscheduling",
		frameworkruntime.Registry{coscheduling.Name: coscheduling.New},
		perf.WithPrepareFn(startCollector))
}
