package scheduler

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

func queued(t *testing.T, name string, prio int32, ts time.Time, podGroup string) *framework.QueuedPodInfo {
	t.Helper()
	pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(name)}, Spec: v1.PodSpec{Priority: ptr.To(prio)}}
	if podGroup != "" {
		pod.Labels = map[string]string{api.LabelPodGroup: podGroup}
	}
	pi, err := framework.NewPodInfo(pod)
	if err != nil {
		t.Fatal(err)
	}
	return &framework.QueuedPodInfo{PodInfo: pi, QueueingParams: framework.QueueingParams{Timestamp: ts}}
}

func TestLess(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mgr := gang.NewManager(gang.NewLedger(gang.LedgerOptions{}), gang.Options{Clock: clock.RealClock{}})
	if err := mgr.SetGang(gang.GangSpec{Key: "ns/old", MinMember: 2, Request: 1, Created: t0}); err != nil {
		t.Fatal(err)
	}
	pl := &Tessera{mgr: mgr}
	tests := map[string]struct {
		a, b *framework.QueuedPodInfo
		want bool
	}{
		"singles: higher priority first": {
			a: queued(t, "a", 10, t0.Add(time.Minute), ""), b: queued(t, "b", 1, t0, ""), want: true,
		},
		"singles: same priority, older first": {
			a: queued(t, "a", 0, t0.Add(time.Minute), ""), b: queued(t, "b", 0, t0, ""), want: false,
		},
		// A member queued late still sorts by its gang's creation time.
		"gang member takes its gang's age": {
			a: queued(t, "m", 0, t0.Add(time.Hour), "old"), b: queued(t, "s", 0, t0.Add(time.Minute), ""), want: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := pl.Less(tc.a, tc.b); got != tc.want {
				t.Errorf("Less = %v, want %v", got, tc.want)
			}
		})
	}
}

func BenchmarkLessSingles(b *testing.B) {
	t := &testing.T{}
	t0 := time.Now()
	pl := &Tessera{mgr: gang.NewManager(gang.NewLedger(gang.LedgerOptions{}), gang.Options{Clock: clock.RealClock{}})}
	x, y := queued(t, "a", 0, t0, ""), queued(t, "b", 0, t0.Add(time.Second), "")
	b.ReportAllocs()
	for b.Loop() {
		pl.Less(x, y)
	}
}
