package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tessera-gpu/tessera/api"
)

// TesseraNamespace is where the manifests install Tessera.
const TesseraNamespace = "tessera-system"

// Kubectl runs the kubectl built by make tools against the cluster as admin
// and returns its combined output.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.runTool(ctx, "kubectl", nil, args...)
}

// runTool runs a client tool of make tools (kubectl, helm) against the
// cluster as admin, with extra environment variables, and returns its
// combined output.
func (c *Cluster) runTool(ctx context.Context, name string, env []string, args ...string) (string, error) {
	toolsDir := c.cfg.ToolsDir
	if toolsDir == "" {
		toolsDir = os.Getenv("TESSERA_TOOLS_DIR")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(toolsDir, name), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// InstallTessera applies a kustomize overlay (normally manifests/overlays/local)
// with one more patch for this cluster — the API server's loopback port for
// in-cluster clients and the kubelet's PodResources socket directory; the
// scheduler logs at --v=3 (each turned-down gang and each retry) and the
// device plugin too (each preferred allocation and whose it was), so a
// failed test can show why — and waits until the scheduler and the device plugin are ready and the real
// node advertises GPU slices.
//
// With TESSERA_E2E_SCHEDULER_GATES set (e.g.
// "GenericWorkload=true,TopologyAwareWorkloadScheduling=true"; the API
// server always runs with both on) the tessera-scheduler container also
// gets --feature-gates=<that value>; unset, the scheduler's gates keep
// their defaults (both off in 1.37).
func (c *Cluster) InstallTessera(ctx context.Context, overlay string) error {
	return c.install(ctx, overlay, false)
}

// DRAComponent is the kustomize component that turns the node agent into
// the DRA driver (relative to the repository root).
const DRAComponent = "manifests/components/dra"

// InstallTesseraDRA is InstallTessera with the node agent as DRA driver
// (DRAComponent on top of overlay, normally manifests/overlays/local), its
// kubelet and CDI paths those of this cluster; it waits until the real
// node's ResourceSlices are published instead of for slice capacity.
func (c *Cluster) InstallTesseraDRA(ctx context.Context, overlay string) error {
	return c.install(ctx, overlay, true)
}

func (c *Cluster) install(ctx context.Context, overlay string, dra bool) error {
	gates, err := schedulerGatesPatch(os.Getenv(SchedulerGatesEnv))
	if err != nil {
		return err
	}
	dir := filepath.Join(c.Dir, "install")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	overlay, err = filepath.Abs(overlay)
	if err != nil {
		return err
	}
	// kustomize takes only relative paths to other kustomizations.
	rel, err := filepath.Rel(dir, overlay)
	if err != nil {
		return err
	}
	k := installSpec{overlay: rel, podResourcesDir: filepath.Dir(c.PodResourcesSocket()), port: strings.TrimPrefix(c.APIServerURL, "https://127.0.0.1:"), gates: gates}
	if dra {
		comp, err := filepath.Abs(filepath.Join(filepath.Dir(overlay), "..", "..", DRAComponent))
		if err != nil {
			return err
		}
		if k.draComponent, err = filepath.Rel(dir, comp); err != nil {
			return err
		}
		k.kubeletDir, k.cdiDir = c.kubeletRoot(), c.CDISpecDir()
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k.kustomization()), 0o644); err != nil {
		return err
	}
	// --force-conflicts: switching between the two modes changes the
	// DaemonSet's args list, which the previous apply owns.
	if _, err := c.Kubectl(ctx, "apply", "--server-side", "--force-conflicts", "-k", dir); err != nil {
		return err
	}
	if dra {
		return c.WaitForTesseraDRA(ctx, 3*time.Minute)
	}
	return c.WaitForTessera(ctx, 3*time.Minute)
}

// WaitForTessera waits until the scheduler Deployment is available, the
// device plugin DaemonSet is ready on every node it targets, and the real
// node has GPU slice capacity.
func (c *Cluster) WaitForTessera(ctx context.Context, timeout time.Duration) error {
	client, err := c.Client()
	if err != nil {
		return err
	}
	var last string
	return poll(ctx, time.Second, timeout, func(ctx context.Context) (bool, error) {
		last = workloadsNotReady(ctx, client)
		if last == "" && c.RealNodeName != "" {
			node, err := client.CoreV1().Nodes().Get(ctx, c.RealNodeName, metav1.GetOptions{})
			if err != nil {
				last = err.Error()
			} else if q := node.Status.Allocatable[api.ResourceName]; q.Value() == 0 {
				last = fmt.Sprintf("node %s advertises no %s yet", c.RealNodeName, api.ResourceName)
			} else if inv, err := api.ParseInventory(node.Annotations[api.AnnotationInventory]); err != nil {
				last = fmt.Sprintf("node %s has no usable inventory annotation yet: %v", c.RealNodeName, err)
			} else if inv.DeviceAPI != "" {
				last = fmt.Sprintf("node %s's inventory still says device API %q", c.RealNodeName, inv.DeviceAPI)
			}
		}
		return last == "", nil
	}, func() error {
		pods, _ := c.Kubectl(ctx, "get", "pods", "-n", TesseraNamespace, "-o", "wide")
		return fmt.Errorf("tessera not ready after %s: %s\n%s", timeout, last, pods)
	})
}

// WaitForTesseraDRA waits until the scheduler Deployment is available, the
// node agent DaemonSet is ready and, as DRA driver, has published the real
// node's devices in ResourceSlices, and the kubelet no longer reports
// device-plugin slices for the node. Until the kubelet's next node status
// update (up to 10 s after the device plugin went away) the node still shows
// allocatable tessera.dev/gpu-slice, and kube-scheduler sends a pod asking
// for it down the device-plugin path (DRA serves an extended resource only
// where the node's allocatable is 0), where the kubelet rejects it with
// UnexpectedAdmissionError (a CI run of 2026-12-04 did). Tessera's Filter
// now keeps such pods off the node until then (scheduler/dra.go,
// kubeletOffersSlices); waiting here still makes "switched" mean what an
// operator checks (docs/design.md, DRA, Install).
func (c *Cluster) WaitForTesseraDRA(ctx context.Context, timeout time.Duration) error {
	client, err := c.Client()
	if err != nil {
		return err
	}
	var last string
	return poll(ctx, time.Second, timeout, func(ctx context.Context) (bool, error) {
		if last = workloadsNotReady(ctx, client); last != "" {
			return false, nil
		}
		slices, err := client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.driver=" + api.DRADriverName + ",spec.nodeName=" + c.RealNodeName})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		devices := 0
		for _, s := range slices.Items {
			devices += len(s.Spec.Devices)
		}
		if node, err := client.CoreV1().Nodes().Get(ctx, c.RealNodeName, metav1.GetOptions{}); err == nil {
			if inv, err := api.ParseInventory(node.Annotations[api.AnnotationInventory]); err != nil || inv.DeviceAPI != api.DeviceAPIDRA {
				last = fmt.Sprintf("node %s's inventory does not say device API %q yet", c.RealNodeName, api.DeviceAPIDRA)
				return false, nil
			}
			if q, ok := node.Status.Allocatable[api.ResourceName]; ok && !q.IsZero() {
				last = fmt.Sprintf("node %s still reports allocatable %s %s from the device plugin", c.RealNodeName, api.ResourceName, q.String())
				return false, nil
			}
		}
		if devices == 0 {
			last = fmt.Sprintf("no ResourceSlice of %s with devices for node %s yet", api.DRADriverName, c.RealNodeName)
			return false, nil
		}
		return true, nil
	}, func() error {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		pods, _ := c.Kubectl(dctx, "get", "pods", "-n", TesseraNamespace, "-o", "wide")
		logs, _ := c.Kubectl(dctx, "logs", "-n", TesseraNamespace, "ds/tessera-device-plugin", "--tail=5")
		return fmt.Errorf("tessera (DRA) not ready after %s: %s\n%s\nnode agent:\n%s", timeout, last, pods, logs)
	})
}

// workloadsNotReady says what keeps Tessera's scheduler Deployment from
// being available or its node agent DaemonSet from being rolled out and
// ready on every node it targets; "" once both are.
func workloadsNotReady(ctx context.Context, client kubernetes.Interface) string {
	dep, err := client.AppsV1().Deployments(TesseraNamespace).Get(ctx, "tessera-scheduler", metav1.GetOptions{})
	switch {
	case err != nil:
		return err.Error()
	case !deploymentAvailable(dep):
		return fmt.Sprintf("scheduler: %d/%d replicas available", dep.Status.AvailableReplicas, *dep.Spec.Replicas)
	}
	ds, err := client.AppsV1().DaemonSets(TesseraNamespace).Get(ctx, "tessera-device-plugin", metav1.GetOptions{})
	switch {
	case err != nil:
		return err.Error()
	case ds.Status.DesiredNumberScheduled == 0 || ds.Status.UpdatedNumberScheduled < ds.Status.DesiredNumberScheduled ||
		ds.Status.NumberReady < ds.Status.DesiredNumberScheduled:
		return fmt.Sprintf("node agent: %d/%d updated, %d ready", ds.Status.UpdatedNumberScheduled, ds.Status.DesiredNumberScheduled, ds.Status.NumberReady)
	}
	return ""
}

func deploymentAvailable(d *appsv1.Deployment) bool {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.Status.AvailableReplicas >= want && d.Status.UpdatedReplicas >= want
}

// SchedulerGatesEnv names the opt-in for the tessera-scheduler's feature
// gates in the local cluster (InstallTessera).
const SchedulerGatesEnv = "TESSERA_E2E_SCHEDULER_GATES"

// schedulerGatesPatch turns a --feature-gates value ("Name=true,Name=false")
// into one JSON-patch line for the tessera-scheduler Deployment's patch, or
// "" for an empty value. Anything but Name=true|false pairs is refused, so
// the value cannot change the patch's YAML.
func schedulerGatesPatch(v string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", nil
	}
	var pairs []string
	for _, p := range strings.Split(v, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || (val != "true" && val != "false") || !gateName(name) {
			return "", fmt.Errorf("%s=%q: want Name=true|false[,Name=true|false...], got %q", SchedulerGatesEnv, v, p)
		}
		pairs = append(pairs, name+"="+val)
	}
	return fmt.Sprintf("    - {op: add, path: /spec/template/spec/containers/0/args/-, value: %q}\n",
		"--feature-gates="+strings.Join(pairs, ",")), nil
}

func gateName(s string) bool {
	if s == "" || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// installSpec is what InstallTessera's kustomization.yaml says: the overlay
// (relative path) plus this cluster's patches; gates is
// schedulerGatesPatch's line. With draComponent (relative path) the node
// agent runs as DRA driver with the kubelet's plugin directories under
// kubeletDir and CDI specs in cdiDir.
type installSpec struct {
	overlay, podResourcesDir, port, gates string
	draComponent, kubeletDir, cdiDir      string
}

func (k installSpec) kustomization() string {
	env := fmt.Sprintf(`    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_PORT, value: %q}}
`, k.port)
	components, draPatch := "", ""
	if k.draComponent != "" {
		components = fmt.Sprintf("components:\n- %s\n", k.draComponent)
		// The component's volumes and mounts 3-5 (its daemonset-patch.yaml):
		// this kubelet's directories, the plugin one at the same path in
		// the container (the socket is registered by that path).
		plugins, registry := filepath.Join(k.kubeletDir, "plugins"), filepath.Join(k.kubeletDir, "plugins_registry")
		draPatch = fmt.Sprintf(`    - {op: replace, path: /spec/template/spec/volumes/3/hostPath/path, value: %[1]q}
    - {op: replace, path: /spec/template/spec/containers/0/volumeMounts/3/mountPath, value: %[1]q}
    - {op: replace, path: /spec/template/spec/volumes/4/hostPath/path, value: %[2]q}
    - {op: replace, path: /spec/template/spec/volumes/5/hostPath/path, value: %[3]q}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: %[4]q}
`, plugins, registry, k.cdiDir, "--dra-plugin-dir="+filepath.Join(plugins, api.DRADriverName))
	}
	return fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- %s
%spatches:
- target: {kind: DaemonSet, name: tessera-device-plugin}
  patch: |-
    - {op: replace, path: /spec/template/spec/volumes/1/hostPath/path, value: %q}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--v=3"}
%s%s- target: {kind: Deployment, name: tessera-scheduler}
  patch: |-
    - {op: add, path: /spec/template/spec/containers/0/env, value: []}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--v=3"}
%s%s`, k.overlay, components, k.podResourcesDir, env, draPatch, env, k.gates)
}
