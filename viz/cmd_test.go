package viz

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	schedv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/tessera-gpu/tessera/gang"
)

// fakeClients serves fixture16 through fake clients: PodGroups of the
// scheduling.x-k8s.io API through the dynamic client, native ones through
// the typed client, both announced by discovery.
func fakeClients(t *testing.T) *Clients {
	t.Helper()
	in := fixture16()
	var objs []runtime.Object
	for i := range in.Nodes {
		objs = append(objs, &in.Nodes[i])
	}
	for i := range in.Pods {
		objs = append(objs, &in.Pods[i])
	}
	for i := range in.Events {
		objs = append(objs, &in.Events[i])
	}
	var groups []runtime.Object
	for _, g := range in.Groups {
		meta := metav1.ObjectMeta{Namespace: g.Namespace, Name: g.Name, CreationTimestamp: metav1.NewTime(g.Created)}
		switch g.Source {
		case gang.SourceNative:
			pg := &schedv1beta1.PodGroup{ObjectMeta: meta}
			if g.NotGang {
				pg.Spec.SchedulingPolicy.Basic = &schedv1beta1.BasicSchedulingPolicy{}
			} else {
				pg.Spec.SchedulingPolicy.Gang = &schedv1beta1.GangSchedulingPolicy{MinCount: int32(g.MinMember)}
			}
			if g.Required != "" {
				pg.Spec.SchedulingConstraints = &schedv1beta1.PodGroupSchedulingConstraints{Topology: []schedv1beta1.TopologyConstraint{{Key: g.Required}}}
			}
			objs = append(objs, pg)
		default:
			groups = append(groups, &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
				"metadata": map[string]any{"namespace": g.Namespace, "name": g.Name},
				"spec":     map[string]any{"minMember": int64(g.MinMember)},
			}})
		}
	}
	kc := fake.NewClientset(objs...)
	kc.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{
		{GroupVersion: PodGroupGVR.GroupVersion().String(), APIResources: []metav1.APIResource{{Name: "podgroups", Namespaced: true, Kind: "PodGroup"}}},
		{GroupVersion: NativePodGroupGVR.GroupVersion().String(), APIResources: []metav1.APIResource{{Name: "podgroups", Namespaced: true, Kind: "PodGroup"}}},
	}
	dc := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{PodGroupGVR: "PodGroupList"}, groups...)
	return &Clients{Kube: kc, Dynamic: dc}
}

func runCommand(t *testing.T, c *Clients, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	o := &Options{ConfigFlags: genericclioptions.NewConfigFlags(false),
		Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, clients: c,
		lookupEnv: func(string) (string, bool) { return "", false }}
	// No kubeconfig on disk: the namespace comes from the flag or defaults.
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	cmd := newCommand(o)
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

func TestCommandGangsJSON(t *testing.T) {
	c := fakeClients(t)
	tests := map[string]struct {
		args []string
		want map[string]string // gang key → "source placed/required state reason"
	}{
		"all namespaces": {args: []string{"gangs", "-A", "-o", "json"}, want: map[string]string{
			"ml/llama-70b":   "PodGroup 4/4 Placed GangPlaced",
			"ml/mixtral-0":   "LeaderWorkerSet 2/2 Placed ",
			"ml/pending-big": "PodGroup 0/8 Pending GangUnschedulable",
			"ml/rejected":    "PodGroup 0/2 Pending GangRejected",
			"ml/waiting":     "PodGroup 0/3 Pending WaitingForMembers",
			"research/tp4":   "Workload 4/4 Placed ",
		}},
		"one namespace": {args: []string{"gangs", "-n", "research", "-o", "json"}, want: map[string]string{
			"research/tp4": "Workload 4/4 Placed ",
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, _, err := runCommand(t, c, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			var got struct{ Gangs []Gang }
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, out)
			}
			m := map[string]string{}
			for _, g := range got.Gangs {
				m[g.Key()] = strings.Join([]string{string(g.Source), fmt.Sprintf("%d/%d", g.Placed, g.Required), g.State, g.LastReason}, " ")
			}
			if diff := cmp.Diff(tc.want, m); diff != "" {
				t.Errorf("gangs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCommandNodesAndSVG(t *testing.T) {
	c := fakeClients(t)
	svg := filepath.Join(t.TempDir(), "map.svg")
	out, errOut, err := runCommand(t, c, "nodes", "--gangs", "--svg", svg)
	if err != nil {
		t.Fatal(err)
	}
	// The fake clients serve fixture16, so the map matches the golden
	// file up to the gang table's times (which depend on the clock).
	want, err := os.ReadFile(filepath.Join("testdata", "nodes16.golden"))
	if err != nil {
		t.Fatal(err)
	}
	mapPart := func(s string) string { return s[:strings.Index(s, "\nMAP ")] }
	if diff := cmp.Diff(mapPart(string(want)), mapPart(out)); diff != "" {
		t.Errorf("nodes map (-golden +got):\n%s", diff)
	}
	if !strings.Contains(errOut, "wrote "+svg) {
		t.Errorf("stderr %q does not report the SVG", errOut)
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	text := svgCharData(t, b)
	for _, g := range []string{"ml/llama-70b", "ml/mixtral-0", "research/tp4"} {
		if !strings.Contains(text, g) {
			t.Errorf("SVG does not name %s", g)
		}
	}
}

func TestCommandExplain(t *testing.T) {
	c := fakeClients(t)
	tests := map[string]struct {
		args    []string
		want    []string
		wantErr string
	}{
		"bound gang member": {args: []string{"explain", "-n", "ml", "pod/llama-70b-0"},
			want: []string{"Running on node gpu-node-0", "gang ml/llama-70b (PodGroup): 4/4", "GangPlaced"}},
		"pending": {args: []string{"explain", "-n", "default", "pending-1"},
			want: []string{"Pending (Unschedulable)", "FailedScheduling"}},
		"json": {args: []string{"explain", "-n", "default", "notebook-3", "-o", "json"},
			want: []string{`"slicesFrom": "tessera.dev/slices-allocated"`, "MISMATCH"}},
		"missing":    {args: []string{"explain", "-n", "default", "nope"}, wantErr: "default/nope not found"},
		"bad output": {args: []string{"gangs", "-o", "wide"}, wantErr: `--output "wide"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, _, err := runCommand(t, c, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestUseColor(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tests := map[string]struct {
		flag string
		env  map[string]string
		want bool
	}{
		"auto, not a terminal": {flag: "auto", want: false},
		"always":               {flag: "always", want: true},
		"never":                {flag: "never", want: false},
		"NO_COLOR wins":        {flag: "auto", env: map[string]string{"NO_COLOR": ""}, want: false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := &Options{Color: tc.flag, Streams: genericiooptions.IOStreams{Out: f},
				lookupEnv: func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }}
			if got := o.useColor(); got != tc.want {
				t.Errorf("useColor = %v, want %v", got, tc.want)
			}
		})
	}
}
