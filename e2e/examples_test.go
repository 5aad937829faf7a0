package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/scenario"
)

// readExample decodes a multi-document example manifest.
func readExample(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var out []*unstructured.Unstructured
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) > 0 {
			out = append(out, &u)
		}
	}
}

// TestStatefulSetExample applies manifests/examples/shard-server-statefulset.yaml
// as a user would — only pointed at the local image and the simulated GPU
// nodes — and checks the StatefulSet's pods place as one gang inside one
// clique on distinct GPUs.
func TestStatefulSetExample(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "example")
	gvr := map[string]schema.GroupVersionResource{
		"PodGroup":    scenario.PodGroupResource,
		"Service":     {Version: "v1", Resource: "services"},
		"StatefulSet": {Group: "apps", Version: "v1", Resource: "statefulsets"},
	}
	for _, obj := range readExample(t, "../manifests/examples/shard-server-statefulset.yaml") {
		if obj.GetKind() == "StatefulSet" {
			containers, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
			c := containers[0].(map[string]any)
			c["image"], c["imagePullPolicy"] = scenario.ShardServerImage, "Never"
			if err := unstructured.SetNestedSlice(obj.Object, containers, "spec", "template", "spec", "containers"); err != nil {
				t.Fatal(err)
			}
			if err := unstructured.SetNestedStringMap(obj.Object, map[string]string{scenario.SimulatedLabel: "true"}, "spec", "template", "spec", "nodeSelector"); err != nil {
				t.Fatal(err)
			}
		}
		r, ok := gvr[obj.GetKind()]
		if !ok {
			t.Fatalf("example has unexpected kind %s", obj.GetKind())
		}
		if _, err := e.Dynamic.Resource(r).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
	pods, err := e.WaitPods(ctx, ns, "app=llama-tp2", 2, time.Minute, "running", scenario.Running)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := e.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clique := map[string]string{}
	for _, n := range nodes.Items {
		clique[n.Name] = n.Labels[api.LabelClique]
	}
	cliques, gpus := map[string]bool{}, map[string]bool{}
	for _, p := range pods {
		cliques[clique[p.Spec.NodeName]] = true
		ids, err := scenario.Slices(&p)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range api.GPUsOf(ids) {
			if gpus[g] {
				t.Errorf("two ranks share GPU %s", g)
			}
			gpus[g] = true
		}
	}
	if len(cliques) != 1 {
		t.Errorf("the StatefulSet's ranks span cliques %v", cliques)
	}
}
