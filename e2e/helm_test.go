package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/e2e/scenario"
)

const chartPath = "../charts/tessera"

// TestHelmInstall replaces the suite's kustomize install with `helm install`
// of charts/tessera (values-local.yaml plus this cluster's port and paths),
// runs the data-path test on it, changes the sharing through `helm upgrade`
// and checks the node follows, then uninstalls and checks nothing of the
// release is left but the PodGroup CRD (Helm keeps crds/ on uninstall). The
// kustomize install is put back for the tests after this one.
func TestHelmInstall(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	c := testCluster
	e := env(t)

	if err := c.UninstallKustomize(ctx, 3*time.Minute); err != nil {
		t.Fatalf("removing the kustomize install: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
		defer cancel()
		// Whatever the test left: release gone, namespace gone, then the
		// suite's install back.
		_, _ = c.Helm(ctx, "uninstall", cluster.HelmRelease, "-n", cluster.TesseraNamespace, "--ignore-not-found")
		_, _ = c.Kubectl(ctx, "delete", "namespace", cluster.TesseraNamespace, "--ignore-not-found", "--wait=false")
		if err := c.WaitNamespaceGone(ctx, cluster.TesseraNamespace, 3*time.Minute); err != nil {
			t.Errorf("restoring the kustomize install: %v", err)
			return
		}
		if err := c.InstallTessera(ctx, "../manifests/overlays/local"); err != nil {
			t.Errorf("restoring the kustomize install: %v", err)
			return
		}
		// The node's inventory and allocatable may still be those the
		// chart's last sharing left; the tests after this one count slices.
		if gpus := len(realNodeInventory(ctx, t, e).GPUs); gpus > 0 {
			waitRealNode(ctx, t, e, "the kustomize install's sharing again", api.StrategyTimeSlice, 4, gpus*4)
		}
	})

	values, err := c.HelmValues(chartPath + "/values-local.yaml")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := c.Helm(ctx, "install", cluster.HelmRelease, chartPath, "-n", cluster.TesseraNamespace,
		"--create-namespace", "-f", values); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("helm install:\n%s", out)
	}
	if err := c.WaitForTessera(ctx, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("FIGURE helm_install_to_ready_seconds = %.1f", time.Since(start).Seconds())
	inv := realNodeInventory(ctx, t, e)
	gpus := len(inv.GPUs)
	waitRealNode(ctx, t, e, "the chart's default sharing", api.StrategyTimeSlice, 4, gpus*4)

	t.Run("data path", checkFractionalPodGetsItsSlices)

	// Values changes take effect on upgrade: the device plugin applies its
	// ConfigMap live and re-advertises.
	upgrade := func(sets ...string) {
		t.Helper()
		args := []string{"upgrade", cluster.HelmRelease, chartPath, "-n", cluster.TesseraNamespace, "--reuse-values"}
		for _, s := range sets {
			args = append(args, "--set", s)
		}
		if _, err := c.Helm(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}
	upgrade("devicePlugin.sharing.slicesPerGPU=2")
	waitRealNode(ctx, t, e, "slicesPerGPU=2", api.StrategyTimeSlice, 2, gpus*2)
	// Slicing by memory: as many 20 GiB slices as fit in one GPU.
	upgrade("devicePlugin.sharing.strategy=mps", "devicePlugin.sharing.slicesPerGPU=0", "devicePlugin.sharing.sliceMemoryMiB=20480")
	perGPU := int(inv.GPUs[0].MemoryMiB / 20480)
	waitRealNode(ctx, t, e, "mps with 20 GiB slices", api.StrategyMPS, perGPU, gpus*perGPU)
	if out, err := c.Helm(ctx, "history", cluster.HelmRelease, "-n", cluster.TesseraNamespace); err != nil {
		t.Error(err)
	} else if n := len(strings.Split(strings.TrimSpace(out), "\n")) - 1; n != 3 {
		t.Errorf("helm history shows %d revisions, want 3:\n%s", n, out)
	}

	// Uninstall: every object of the release goes; the CRD stays.
	rendered, err := c.Helm(ctx, "get", "manifest", cluster.HelmRelease, "-n", cluster.TesseraNamespace)
	if err != nil {
		t.Fatal(err)
	}
	objs := releaseObjects(t, rendered)
	if len(objs) < 10 {
		t.Fatalf("the release holds %d objects: %v", len(objs), objs)
	}
	if _, err := c.Helm(ctx, "uninstall", cluster.HelmRelease, "-n", cluster.TesseraNamespace, "--wait", "--timeout", "3m"); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the release's objects gone", time.Second, 2*time.Minute, func(ctx context.Context) (bool, string) {
		var left []string
		for _, o := range objs {
			args := []string{"get", o.resource + "/" + o.name, "--ignore-not-found", "-o", "name"}
			if o.namespace != "" {
				args = append(args, "-n", o.namespace)
			}
			out, err := c.Kubectl(ctx, args...)
			if err != nil {
				return false, err.Error()
			}
			if strings.TrimSpace(out) != "" {
				left = append(left, strings.TrimSpace(out))
			}
		}
		return len(left) == 0, fmt.Sprint(left)
	})
	pods, err := e.Client.CoreV1().Pods(cluster.TesseraNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			t.Errorf("pod %s still running after uninstall", p.Name)
		}
	}
	if _, err := c.Kubectl(ctx, "get", "crd", "podgroups.scheduling.x-k8s.io", "-o", "name"); err != nil {
		t.Errorf("the PodGroup CRD should stay after uninstall (crds/ are never deleted by Helm): %v", err)
	}
}

// waitRealNode waits until the real node's inventory says strategy with
// perGPU slices per GPU and its allocatable GPU slices are total.
func waitRealNode(ctx context.Context, t *testing.T, e *scenario.Env, what string, strategy api.SharingStrategy, perGPU, total int) {
	t.Helper()
	start := time.Now()
	waitFor(ctx, t, "real node advertising "+what, 500*time.Millisecond, 90*time.Second, func(ctx context.Context) (bool, string) {
		node, err := e.Client.CoreV1().Nodes().Get(ctx, testCluster.RealNodeName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		inv, err := api.ParseInventory(node.Annotations[api.AnnotationInventory])
		if err != nil {
			return false, err.Error()
		}
		q := node.Status.Allocatable[api.ResourceName]
		state := fmt.Sprintf("inventory %s × %d, allocatable %s", inv.Strategy, inv.SlicesPerGPU, q.String())
		return inv.Strategy == strategy && inv.SlicesPerGPU == perGPU && q.Value() == int64(total), state
	})
	t.Logf("FIGURE helm_value_to_node_seconds{%s} = %.1f", what, time.Since(start).Seconds())
}

type releaseObject struct{ resource, namespace, name string }

// releaseObjects lists the objects of a rendered release manifest as
// kubectl resource names (kind.group).
func releaseObjects(t *testing.T, manifest string) []releaseObject {
	t.Helper()
	var out []releaseObject
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decoding the release manifest: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		u := unstructured.Unstructured{Object: m}
		gk := u.GroupVersionKind().GroupKind()
		res := strings.ToLower(gk.Kind)
		if gk.Group != "" {
			res += "." + gk.Group
		}
		out = append(out, releaseObject{resource: res, namespace: u.GetNamespace(), name: u.GetName()})
	}
	return out
}
