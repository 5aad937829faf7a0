package e2e

// Malformed and impossible objects (issue 8): each must produce a clear
// event or condition, bind nothing, hold no slice, and leave the scheduler
// serving everyone else.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/e2e/scenario"
)

// eventNote waits for an event of reason on the named object and returns
// its note.
func eventNote(ctx context.Context, e *scenario.Env, ns, name, reason string) (string, error) {
	var note string
	err := wait.PollUntilContextTimeout(ctx, 300*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := e.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, ev := range list.Items {
			if ev.Reason == reason && ev.Regarding.Name == name {
				note = ev.Note
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("no %s event on %s/%s", reason, ns, name)
	}
	return note, nil
}

func TestBadInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "bad")
	sim := map[string]string{scenario.SimulatedLabel: "true"}

	t.Run("negative slices are refused by the API server", func(t *testing.T) {
		p := scenario.SlicePod(ns, "negative", 1, scenario.PodOptions{NodeSelector: sim})
		p.Spec.Containers[0].Resources.Limits[api.ResourceName] = *resource.NewQuantity(-2, resource.DecimalSI)
		_, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "must be greater than or equal to 0") {
			t.Errorf("creating a pod with -2 slices: %v, want a validation error", err)
		}
	})

	type gangCase struct {
		name       string
		pg         func() error // nil: no PodGroup
		pods       int
		slices     int
		reasonOn   string // object the event is on
		reason     string
		noteSubstr string
		// apiMayRefuse: creating the PodGroup may already fail with an
		// error containing this (CRD validation); that passes the case.
		apiMayRefuse string
	}
	cases := []gangCase{
		// Planned for 3, only 2 come: the reservation times out and the
		// whole gang is released (a short timeout keeps the test short).
		{name: "minmember-above-pods", pods: 2, slices: 1, reasonOn: "minmember-above-pods", reason: "GangRejected", noteSubstr: "timed out",
			pg: func() error {
				pg := scenario.PodGroup(ns, "minmember-above-pods", 3, "")
				pg.Spec.ScheduleTimeoutSeconds = ptr.To[int32](3)
				return e.CreatePodGroup(ctx, pg)
			}},
		{name: "unknown-topology", pods: 2, slices: 1, reasonOn: "unknown-topology", reason: "GangUnschedulable", noteSubstr: "example.com/no-such-key",
			pg: func() error {
				return e.CreatePodGroup(ctx, scenario.PodGroup(ns, "unknown-topology", 2, "example.com/no-such-key"))
			}},
		{name: "negative-minmember", pods: 2, slices: 1, reasonOn: "negative-minmember", reason: "InvalidGang", noteSubstr: "minMember", apiMayRefuse: "minMember",
			pg: func() error { return e.CreatePodGroup(ctx, scenario.PodGroup(ns, "negative-minmember", -1, "")) }},
		{name: "missing-podgroup", pods: 1, slices: 1, reasonOn: "missing-podgroup-0", reason: "GangNotReady"},
		{name: "too-big", pods: 1, slices: 1000, reasonOn: "too-big", reason: "GangUnschedulable",
			pg: func() error { return e.CreatePodGroup(ctx, scenario.PodGroup(ns, "too-big", 1, "")) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.pg != nil {
				if err := c.pg(); err != nil {
					if c.apiMayRefuse != "" && strings.Contains(err.Error(), c.apiMayRefuse) {
						t.Logf("the CRD refuses it already: %v", err)
						return
					}
					t.Fatal(err)
				}
			}
			for i := 0; i < c.pods; i++ {
				p := scenario.SlicePod(ns, fmt.Sprintf("%s-%d", c.name, i), c.slices, scenario.PodOptions{NodeSelector: sim, Gang: c.name})
				if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			note, err := eventNote(ctx, e, ns, c.reasonOn, c.reason)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(note, c.noteSubstr) {
				t.Errorf("%s event %q does not mention %q", c.reason, note, c.noteSubstr)
			}
			t.Logf("%s: %s", c.reason, note)
		})
	}
	// None of them bound a pod.
	list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.Spec.NodeName != "" {
			t.Errorf("malformed gang member %s bound to %s", p.Name, p.Spec.NodeName)
		}
	}

	t.Run("inventory from a newer version", func(t *testing.T) {
		node := cluster.SimulatedNodeName(simulatedNodes - 1)
		n, err := e.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		orig := n.Annotations[api.AnnotationInventory]
		newer := strings.Replace(orig, "tessera.dev/v1alpha1", "tessera.dev/v9", 1)
		setInv := func(v string) {
			patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, api.AnnotationInventory, v)
			if _, err := e.Client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		setInv(newer)
		defer setInv(orig)
		note, err := eventNote(ctx, e, "default", node, "InvalidGPUInventory")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(note, "v9") {
			t.Errorf("InvalidGPUInventory note %q does not name the version", note)
		}
	})

	// Nothing is stuck: deleting the bad objects frees everything and the
	// scheduler still places a good gang.
	if err := e.DeleteAndWait(ctx, ns, "", time.Minute); err != nil {
		t.Fatal(err)
	}
	pods, err := e.Gang(ctx, ns, "good", 2, 2, api.LabelClique, scenario.PodOptions{NodeSelector: sim})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitPods(ctx, ns, scenario.GangSelector("good"), len(pods), time.Minute, "bound", scenario.Bound); err != nil {
		t.Fatalf("a valid gang after the bad input: %v", err)
	}
}
