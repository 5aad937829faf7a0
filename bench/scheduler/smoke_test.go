package scheduler_bench

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"text/template"
	"time"

	v1 "k8s.io/api/core/v1"
	schedulingv1beta1 "k8s.io/api/scheduling/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/tessera-gpu/tessera/api"
)

// funcs mirrors the template functions scheduler_perf 1.37 gives templates.
var funcs = template.FuncMap{
	"AddInt":      func(a, b int) int { return a + b },
	"DivideInt":   func(a, b int) int { return a / b },
	"MultiplyInt": func(a, b int) int { return a * b },
	"Mod":         func(a, b int) int { return a % b },
	"SubtractInt": func(a, b int) int { return a - b },
	"Int":         func(a int) int { return a },
}

func render(t *testing.T, path string, env map[string]any, into any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := template.New(path).Funcs(funcs).Parse(string(raw))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, env); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := yaml.UnmarshalStrict(b.Bytes(), into); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b.String())
	}
}

// TestSmoke checks the harness wiring without a cluster (the benchmark
// itself runs under `make bench`): the GPU node template yields a valid
// inventory, the GPU mix cycle has the documented shapes, the collector's
// arithmetic is right, and bench/baseline's copy of record.go is current.
func TestSmoke(t *testing.T) {
	var node v1.Node
	render(t, "templates/node-gpu.yaml", map[string]any{"Index": 17, "nodesPerRack": 64, "nodesPerClique": 8, "slicesPerGPU": 8}, &node)
	inv, err := api.ParseInventory(node.Annotations[api.AnnotationInventory])
	if err != nil {
		t.Fatalf("inventory: %v", err)
	}
	if len(inv.GPUs) != 8 || inv.TotalSlices() != 64 || len(inv.GPUs[3].NVLinkPeers) != 7 || inv.GPUs[0].Clique != "clique-2" {
		t.Errorf("inventory = %+v", inv)
	}
	if q := node.Status.Allocatable[api.ResourceName]; q.Value() != 64 || node.Labels[api.LabelClique] != "clique-2" {
		t.Errorf("capacity %v, labels %v", q.String(), node.Labels)
	}

	// Two cycles of the GPU mix, both variants.
	for _, tessera := range []int{0, 1} {
		slices, members := 0, map[string]int{}
		for i := range 54 {
			var pod v1.Pod
			render(t, "templates/mix-pod.yaml", map[string]any{"Index": i, "tessera": tessera}, &pod)
			var s int
			fmt.Sscan(pod.Labels["bench.tessera.dev/slices"], &s)
			slices += s
			if g := pod.Labels["bench.tessera.dev/gang"]; g != "" {
				members[g]++
				// Both variants: a native PodGroup in spec.schedulingGroup.
				if pod.Spec.SchedulingGroup == nil || *pod.Spec.SchedulingGroup.PodGroupName != g {
					t.Errorf("pod %d (tessera=%d): gang member without spec.schedulingGroup", i, tessera)
				}
				if _, ok := pod.Labels["scheduling.x-k8s.io/pod-group"]; ok {
					t.Errorf("pod %d (tessera=%d): gang named twice (pod-group label)", i, tessera)
				}
			}
			req := pod.Spec.Containers[0].Resources.Requests
			if tessera == 1 && req.Name(api.ResourceName, "").Value() != int64(s) || tessera == 0 && req.Name("nvidia.com/gpu", "").Value() != 1 {
				t.Errorf("pod %d (tessera=%d): requests %v", i, tessera, req)
			}
		}
		if slices != 2*134 || len(members) != 10 {
			t.Errorf("tessera=%d: %d slices, %d gangs in two cycles", tessera, slices, len(members))
		}
		for g, n := range members {
			var idx int
			fmt.Sscanf(g, "gang-%d", &idx)
			var pg schedulingv1beta1.PodGroup
			render(t, "templates/mix-podgroup.yaml", map[string]any{"Index": idx}, &pg)
			if gang := pg.Spec.SchedulingPolicy.Gang; gang == nil || gang.MinCount != int32(n) {
				t.Errorf("%s: %d members, PodGroup gang policy %+v", g, n, gang)
			}
			if c := pg.Spec.SchedulingConstraints; c == nil || len(c.Topology) != 1 || c.Topology[0].Key != api.LabelClique {
				t.Errorf("%s: topology constraint %+v, want one on %s", g, c, api.LabelClique)
			}
		}
	}

	// Collector arithmetic on a toy cluster: one node of 2 GPUs x 4 slices.
	t0 := time.Now()
	in := Input{
		Nodes:   []NodeInput{{Name: "n", Rack: "r", Clique: "c", GPUs: []GPUInput{{"g0", 4}, {"g1", 4}}}},
		Pods:    []PodInput{{Key: "a", Node: "n", Gang: "g", GangSize: 2, Slices: 1, Assigned: []string{"g0"}}, {Key: "b", Node: "n", Gang: "g", GangSize: 2, Slices: 1, Assigned: []string{"g0"}}, {Key: "c", Gang: "h", GangSize: 2, Slices: 4}, {Key: "d", Node: "n", Gang: "h", GangSize: 2, Slices: 4, Assigned: []string{"g1", "g1", "g1", "g1"}}},
		Created: map[string]time.Time{"a": t0, "b": t0.Add(time.Second / 2), "c": t0.Add(time.Second), "d": t0.Add(2 * time.Second)},
		Bound:   map[string]time.Time{"a": t0.Add(time.Second), "b": t0.Add(2 * time.Second), "d": t0.Add(3 * time.Second)},
	}
	var r Record
	r.compute(in)
	if r.GangsPlaced != 1 || r.PartialGangs != 1 || r.UsedSlices != 6 || r.TotalSlices != 8 || r.FragFree1 != 2 || r.FreeSlices != 2 || r.GangP50Ms != 2000 || r.CreatedPerSec != 2 {
		t.Errorf("record = %+v", r)
	}

	// bench/baseline carries a generated copy of record.go.
	want, _ := os.ReadFile("record.go")
	got, err := os.ReadFile("../baseline/record.go")
	if err != nil {
		t.Fatal(err)
	}
	body := func(b []byte) string {
		s := string(b)
		return s[strings.Index(s, "\nimport"):]
	}
	if body(want) != body(got) {
		t.Errorf("bench/baseline/record.go is stale: run bench/run.sh smoke (it regenerates it)")
	}
}
