package viz

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tessera-gpu/tessera/api"
)

// TestExplainPendingPreemption: a pending pod the scheduler preempted for
// is explained with the Preempting event, its nominated node and the
// victims still terminating; a victim on its way out says it is being
// preempted.
func TestExplainPendingPreemption(t *testing.T) {
	in := &Input{Now: t0}
	in.Nodes = append(in.Nodes, mkNode("gpu-node-0", map[string]string{api.LabelClique: "c0"}, inventory("gpu-node-0", 2, 4, api.StrategyTimeSlice), true))
	victim := mkPod("batch", "low-0", 4, on("gpu-node-0", wholeGPUs(0, 1, 4)...))
	victim.DeletionTimestamp = &metav1.Time{Time: t0.Add(-time.Second)}
	victim.Status.Conditions = append(victim.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue,
		Reason: corev1.PodReasonPreemptionByScheduler, Message: "tessera-scheduler: preempted by pod prod/urgent (priority 1000) to place it in gpu-node-0"})
	pending := mkPod("prod", "urgent", 4, unschedulable("waiting for 1 preempted pods to terminate"))
	pending.Status.NominatedNodeName = "gpu-node-0"
	in.Pods = append(in.Pods, victim, pending)
	in.Events = append(in.Events, event("prod", "Pod", "urgent", "Preempting", "Normal",
		"preempting 1 pods in 1 units of lower priority (batch/low-0) to place pod prod/urgent (priority 1000) in gpu-node-0", 3*time.Second))
	s := Build(in)

	e, err := s.Explain("prod", "urgent")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(e.Reasons, "\n")
	for _, want := range []string{
		"The scheduler preempted lower-priority pods for it (3s ago): preempting 1 pods in 1 units of lower priority (batch/low-0)",
		"It is nominated to node gpu-node-0",
		"1 preempted pods are still terminating",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("explanation of the preemptor lacks %q:\n%s", want, got)
		}
	}
	e, err = s.Explain("batch", "low-0")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(e.Reasons, "\n"); !strings.Contains(got, "It is being preempted: tessera-scheduler: preempted by pod prod/urgent") {
		t.Errorf("explanation of the victim does not say it is being preempted:\n%s", got)
	}
}
