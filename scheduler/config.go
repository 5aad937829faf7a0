package scheduler

import (
	"fmt"
	"strings"

	"github.com/tessera-gpu/tessera/api"
)

// ConfigOptions are the knobs of DefaultConfig.
type ConfigOptions struct {
	// Kubeconfig is the scheduler's kubeconfig; empty means in-cluster.
	Kubeconfig string
	// LeaderElect turns leader election on (kube-system lease
	// tessera-scheduler).
	LeaderElect bool
	// ArgsYAML, when set, is the Tessera plugin's args, as a YAML mapping
	// indented by nothing (it is indented here).
	ArgsYAML string
}

// DefaultConfig returns a KubeSchedulerConfiguration with the
// tessera-scheduler profile:
//
//   - Tessera enabled at multiPoint (QueueSort, PreEnqueue, PreFilter, Filter,
//     PostFilter, Score, Reserve, Permit, PreBind, Bind, PostBind), and
//     named at bind as well so that it binds before DefaultBinder: its Bind
//     writes tessera.dev/slice-assignment in the Binding itself (one API
//     write per pod instead of a patch and a bind) and skips pods without
//     slices; and named at preFilter so that its PreFilter runs before
//     DynamicResources': on DRA nodes it steers the DRA allocator to the
//     slices it chose (dra.go); and at postFilter, so that for a pod its
//     PreFilter turned down (the PreFilters after it did not run) its
//     answer ends the PostFilter chain (postfilter.go);
//   - PrioritySort disabled (Tessera's QueueSort keeps gang members together);
//   - the native gang plugins GangScheduling, TopologyPlacementGenerator and
//     PodGroupPodsCount disabled: with the GenericWorkload gate they would
//     run their own barrier and placement for pods with spec.schedulingGroup,
//     which conflicts with Tessera's whole-gang plan. The core's pod-group
//     cycle itself still runs with the gate on; Tessera cooperates with it
//     (podgroup_cycle.go).
func DefaultConfig(o ConfigOptions) string {
	var b strings.Builder
	b.WriteString("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n")
	fmt.Fprintf(&b, "leaderElection:\n  leaderElect: %t\n  resourceName: %s\n  resourceNamespace: kube-system\n", o.LeaderElect, api.SchedulerName)
	if o.Kubeconfig != "" {
		fmt.Fprintf(&b, "clientConnection:\n  kubeconfig: %q\n  qps: 200\n  burst: 400\n", o.Kubeconfig)
	}
	fmt.Fprintf(&b, `profiles:
- schedulerName: %s
  plugins:
    multiPoint:
      enabled:
      - name: %s
        weight: 3
      disabled:
      - name: PrioritySort
      - name: GangScheduling
      - name: TopologyPlacementGenerator
      - name: PodGroupPodsCount
    preFilter:
      enabled:
      - name: %s
    postFilter:
      enabled:
      - name: %s
    bind:
      enabled:
      - name: %s
`, api.SchedulerName, Name, Name, Name, Name)
	if o.ArgsYAML != "" {
		fmt.Fprintf(&b, "  pluginConfig:\n  - name: %s\n    args:\n", Name)
		for _, line := range strings.Split(strings.TrimRight(o.ArgsYAML, "\n"), "\n") {
			b.WriteString("      " + line + "\n")
		}
	}
	return b.String()
}
