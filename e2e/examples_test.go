package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
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

// TestLeaderWorkerSetExampleServes applies
// manifests/examples/shard-server-leaderworkerset.yaml exactly as shipped to
// the real LWS controller, in a namespace an admin pinned to the real node
// (PodNodeSelector): the kubelet pulls ghcr.io/tessera-gpu/tessera-shard-server:latest
// from the cluster's registry, the worker finds its leader through
// LWS_LEADER_ADDRESS in the cluster DNS, Tessera places the group whole in
// the real node's clique on distinct GPUs, and the leader answers a
// completion on its pod IP.
func TestLeaderWorkerSetExampleServes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := env(t)
	ensureLWS(t)
	ns := createNamespace(ctx, t, "lws-example")
	defer freeRealNode(t, e, ns)
	pin := []byte(`{"metadata":{"annotations":{"scheduler.alpha.kubernetes.io/node-selector":"` + scenario.RealNodeLabel + `=true"}}}`)
	if _, err := e.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, pin, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	var lwsName string
	for _, obj := range readExample(t, "../manifests/examples/shard-server-leaderworkerset.yaml") {
		if obj.GetKind() != "LeaderWorkerSet" {
			t.Fatalf("example has unexpected kind %s", obj.GetKind())
		}
		lwsName = obj.GetName()
		if _, err := e.Dynamic.Resource(lwsResource).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating LeaderWorkerSet %s: %v", obj.GetName(), err)
		}
	}
	defer func() {
		_ = e.Dynamic.Resource(lwsResource).Namespace(ns).Delete(context.Background(), lwsName, metav1.DeleteOptions{})
	}()
	t0 := time.Now()
	pods, err := e.WaitPods(ctx, ns, scenario.LWSNameLabel+"="+lwsName, 2, 3*time.Minute, "running", scenario.Running)
	if err != nil {
		t.Fatal(err)
	}
	leader := pods[0] // sorted by name: <lws>-0, then its worker <lws>-0-1
	if leader.Labels[scenario.LWSWorkerIndexLabel] != "0" {
		t.Fatalf("pod %s is not the leader (worker index %q)", leader.Name, leader.Labels[scenario.LWSWorkerIndexLabel])
	}
	if _, err := e.WaitPods(ctx, ns, scenario.LWSNameLabel+"="+lwsName+","+scenario.LWSWorkerIndexLabel+"=0", 1, 2*time.Minute, "ready", scenario.Ready); err != nil {
		t.Fatal(err)
	}
	figure(t, "lws_example_ready_seconds", time.Since(t0).Seconds(), "s")

	// Pulled from the cluster's registry, the digest it serves.
	digest, err := testCluster.PublishedDigest(ctx, cluster.ShardServerPublished)
	if err != nil {
		t.Fatal(err)
	}
	gpus := map[string]string{}
	for _, p := range pods {
		if p.Spec.NodeName != testCluster.RealNodeName {
			t.Errorf("pod %s on %s, want the real node", p.Name, p.Spec.NodeName)
		}
		if len(p.Status.ContainerStatuses) != 1 || !strings.HasSuffix(p.Status.ContainerStatuses[0].ImageID, "@"+digest) {
			t.Errorf("pod %s runs image %v, want %s@%s from the cluster's registry", p.Name, p.Status.ContainerStatuses, cluster.ShardServerPublished, digest)
		}
		ids, err := scenario.Slices(&p)
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) != 2 {
			t.Errorf("pod %s holds %v, want 2 slices", p.Name, ids)
		}
		for _, g := range api.GPUsOf(ids) {
			if other, ok := gpus[g]; ok {
				t.Errorf("pods %s and %s share GPU %s", other, p.Name, g)
			}
			gpus[g] = p.Name
		}
	}

	// The worker joined through LWS_LEADER_ADDRESS, which the cluster DNS
	// resolves to the leader's pod IP, as it does for the test.
	addr := fmt.Sprintf("%s.%s.%s.svc.%s", leader.Name, lwsName, ns, cluster.ClusterDomain)
	ips, err := testCluster.DNSResolver().LookupHost(ctx, addr)
	if err != nil || len(ips) != 1 || ips[0] != leader.Status.PodIP {
		t.Errorf("cluster DNS: %s -> %v (%v), want the leader's pod IP %s", addr, ips, err, leader.Status.PodIP)
	}
	logs, err := e.Client.CoreV1().Pods(ns).GetLogs(pods[1].Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("leader=%s.%s.%s:", leader.Name, lwsName, ns); !strings.Contains(string(logs), "joined leader") || !strings.Contains(string(logs), want) {
		t.Errorf("worker %s did not join its leader through LWS_LEADER_ADDRESS (%q); its log:\n%s", pods[1].Name, want, logs)
	}

	// A completion from the leader, on its pod IP and the example's port.
	c, err := scenario.Complete(ctx, "http://"+net.JoinHostPort(leader.Status.PodIP, "8000"), "Once upon a time", 8)
	if err != nil {
		t.Fatal(err)
	}
	if c.Text == "" || c.CompletionTokens != 8 {
		t.Errorf("completion %+v, want 8 tokens of text", c)
	}
}
