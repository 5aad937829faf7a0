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
	port := strings.TrimPrefix(c.APIServerURL, "https://127.0.0.1:")
	kustomization := installKustomization(rel, filepath.Dir(c.PodResourcesSocket()), port, gates)
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kustomization), 0o644); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "apply", "--server-side", "-k", dir); err != nil {
		return err
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
		last = ""
		dep, err := client.AppsV1().Deployments(TesseraNamespace).Get(ctx, "tessera-scheduler", metav1.GetOptions{})
		switch {
		case err != nil:
			last = err.Error()
		case !deploymentAvailable(dep):
			last = fmt.Sprintf("scheduler: %d/%d replicas available", dep.Status.AvailableReplicas, *dep.Spec.Replicas)
		}
		if last == "" {
			ds, err := client.AppsV1().DaemonSets(TesseraNamespace).Get(ctx, "tessera-device-plugin", metav1.GetOptions{})
			switch {
			case err != nil:
				last = err.Error()
			case ds.Status.DesiredNumberScheduled == 0 || ds.Status.NumberReady < ds.Status.DesiredNumberScheduled:
				last = fmt.Sprintf("device plugin: %d/%d ready", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
			}
		}
		if last == "" && c.RealNodeName != "" {
			node, err := client.CoreV1().Nodes().Get(ctx, c.RealNodeName, metav1.GetOptions{})
			if err != nil {
				last = err.Error()
			} else if q := node.Status.Allocatable[api.ResourceName]; q.Value() == 0 {
				last = fmt.Sprintf("node %s advertises no %s yet", c.RealNodeName, api.ResourceName)
			} else if _, ok := node.Annotations[api.AnnotationInventory]; !ok {
				last = fmt.Sprintf("node %s has no inventory annotation yet", c.RealNodeName)
			}
		}
		return last == "", nil
	}, func() error {
		pods, _ := c.Kubectl(ctx, "get", "pods", "-n", TesseraNamespace, "-o", "wide")
		return fmt.Errorf("tessera not ready after %s: %s\n%s", timeout, last, pods)
	})
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

// installKustomization is InstallTessera's kustomization.yaml: the overlay at
// rel plus this cluster's patches; gates is schedulerGatesPatch's line.
func installKustomization(rel, podResourcesDir, port, gates string) string {
	env := fmt.Sprintf(`    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
    - {op: add, path: /spec/template/spec/containers/0/env/-, value: {name: KUBERNETES_SERVICE_PORT, value: %q}}
`, port)
	return fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- %s
patches:
- target: {kind: DaemonSet, name: tessera-device-plugin}
  patch: |-
    - {op: replace, path: /spec/template/spec/volumes/1/hostPath/path, value: %q}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--v=3"}
%s- target: {kind: Deployment, name: tessera-scheduler}
  patch: |-
    - {op: add, path: /spec/template/spec/containers/0/env, value: []}
    - {op: add, path: /spec/template/spec/containers/0/args/-, value: "--v=3"}
%s%s`, rel, podResourcesDir, env, env, gates)
}
