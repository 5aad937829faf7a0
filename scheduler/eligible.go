package scheduler

import (
	"sync"

	v1 "k8s.io/api/core/v1"
	v1helper "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
)

// eligibility returns the gang planner's node predicate for pod: the node
// selector and required node affinity match, no untolerated NoSchedule or
// NoExecute taint, and the node is schedulable. These are the in-tree
// filters that depend on the pod and the node alone; checking them while
// planning keeps a plan from naming a node another plugin will refuse. The
// index over nodes is built on first use: the planner asks only when it
// plans, not for members that already have a planned slot.
func eligibility(logger klog.Logger, pod *v1.Pod, nodes []fwk.NodeInfo) func(string) bool {
	var once sync.Once
	var ok map[string]bool
	affinity := nodeaffinity.GetRequiredNodeAffinity(pod)
	build := func() {
		ok = make(map[string]bool, len(nodes))
		for _, ni := range nodes {
			n := ni.Node()
			if n == nil {
				continue
			}
			ok[n.Name] = nodeAllows(logger, pod, affinity, n)
		}
	}
	return func(node string) bool {
		once.Do(build)
		return ok[node]
	}
}

func nodeAllows(logger klog.Logger, pod *v1.Pod, affinity nodeaffinity.RequiredNodeAffinity, n *v1.Node) bool {
	if match, err := affinity.Match(n); err != nil || !match {
		return false
	}
	if n.Spec.Unschedulable && !v1helper.TolerationsTolerateTaint(logger, pod.Spec.Tolerations, &v1.Taint{Key: v1.TaintNodeUnschedulable, Effect: v1.TaintEffectNoSchedule}, false) {
		return false
	}
	_, untolerated := v1helper.FindMatchingUntoleratedTaint(logger, n.Spec.Taints, pod.Spec.Tolerations, func(t *v1.Taint) bool {
		return t.Effect == v1.TaintEffectNoSchedule || t.Effect == v1.TaintEffectNoExecute
	}, false)
	return !untolerated
}
