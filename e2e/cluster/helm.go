package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// HelmRelease is the release name the local cluster's Helm installs use.
const HelmRelease = "tessera"

// Helm runs the helm built by make tools against the cluster as admin, with
// its cache, config and data under the cluster's directory (nothing in the
// user's home), and returns its combined output.
func (c *Cluster) Helm(ctx context.Context, args ...string) (string, error) {
	home := filepath.Join(c.Dir, "helm")
	return c.runTool(ctx, "helm", []string{"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"), "HELM_DATA_HOME=" + filepath.Join(home, "data")}, args...)
}

// HelmValues writes, next to the cluster, the values of a Helm install on
// this cluster: localValues (the chart's values-local.yaml, the counterpart
// of manifests/overlays/local) plus what InstallTessera patches in for this
// cluster: the API server's loopback port, the kubelet's PodResources
// directory, --v=3 and the scheduler's feature gates
// (TESSERA_E2E_SCHEDULER_GATES). Helm replaces lists from a second values
// file instead of appending, so the lists are merged here into one file.
func (c *Cluster) HelmValues(localValues string) (string, error) {
	if _, err := schedulerGatesPatch(os.Getenv(SchedulerGatesEnv)); err != nil {
		return "", err
	}
	raw, err := os.ReadFile(localValues)
	if err != nil {
		return "", err
	}
	var v map[string]any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		return "", fmt.Errorf("%s: %w", localValues, err)
	}
	port := strings.TrimPrefix(c.APIServerURL, "https://127.0.0.1:")
	env := []any{map[string]any{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
		map[string]any{"name": "KUBERNETES_SERVICE_PORT", "value": port}}
	for _, component := range []string{"scheduler", "devicePlugin"} {
		m, _ := v[component].(map[string]any)
		if m == nil {
			m = map[string]any{}
			v[component] = m
		}
		extra, _ := m["extraArgs"].([]any)
		m["extraArgs"] = append(extra, "--v=3")
		m["extraEnv"] = env
	}
	v["devicePlugin"].(map[string]any)["podResourcesDir"] = filepath.Dir(c.PodResourcesSocket())
	if gates := strings.TrimSpace(os.Getenv(SchedulerGatesEnv)); gates != "" {
		v["scheduler"].(map[string]any)["featureGates"] = gates
	}
	out, err := yaml.Marshal(v)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(c.Dir, "helm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "values-cluster.yaml")
	return path, os.WriteFile(path, out, 0o644)
}

// UninstallKustomize deletes what InstallTessera applied, namespace
// included, and waits until the namespace is gone, so another install
// (Helm) starts from nothing.
func (c *Cluster) UninstallKustomize(ctx context.Context, timeout time.Duration) error {
	if _, err := c.Kubectl(ctx, "delete", "-k", filepath.Join(c.Dir, "install"), "--ignore-not-found", "--wait=true",
		fmt.Sprintf("--timeout=%s", timeout)); err != nil {
		return err
	}
	return c.WaitNamespaceGone(ctx, TesseraNamespace, timeout)
}

// WaitNamespaceGone waits until the namespace no longer exists.
func (c *Cluster) WaitNamespaceGone(ctx context.Context, ns string, timeout time.Duration) error {
	client, err := c.Client()
	if err != nil {
		return err
	}
	var last string
	return poll(ctx, 500*time.Millisecond, timeout, func(ctx context.Context) (bool, error) {
		n, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("phase %s, conditions %v", n.Status.Phase, n.Status.Conditions)
		}
		return false, nil
	}, func() error {
		pods, _ := c.Kubectl(ctx, "get", "pods", "-n", ns, "-o", "wide")
		return fmt.Errorf("namespace %s still there after %s: %s\n%s", ns, timeout, last, pods)
	})
}
