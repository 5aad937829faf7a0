// Package charts holds the tests of the Helm chart charts/tessera. The chart
// and manifests/ are two spellings of one install: these tests render both
// with the real tools (helm and kubectl from make tools) and fail on any
// drift, and check that the chart's values reach the objects they name.
package charts

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/manifests/grafana"
)

const (
	chartDir    = "tessera"
	releaseName = "tessera"
	namespace   = "tessera-system"
)

// helmOnlyLabels are the labels the chart adds to every object's metadata
// on top of those manifests/ sets: they say which release owns the object.
var helmOnlyLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}

func TestMain(m *testing.M) {
	if os.Getenv("TESSERA_TOOLS_DIR") == "" {
		fmt.Fprintln(os.Stderr, "TESSERA_TOOLS_DIR is not set: these tests run helm and kubectl built by `make tools`; run them with `make test-unit`")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func tool(t *testing.T, name string) string {
	t.Helper()
	return filepath.Join(os.Getenv("TESSERA_TOOLS_DIR"), name)
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(tool(t, name), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// helmTemplate renders the chart as `helm install` would, CRDs included.
func helmTemplate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return run(t, "helm", append([]string{"template", releaseName, chartDir, "--namespace", namespace, "--include-crds"}, args...)...)
}

func mustHelmTemplate(t *testing.T, args ...string) map[string]*unstructured.Unstructured {
	t.Helper()
	out, err := helmTemplate(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, out)
}

func kustomize(t *testing.T, dir string) map[string]*unstructured.Unstructured {
	t.Helper()
	out, err := run(t, "kubectl", "kustomize", dir)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, out)
}

// decode splits a YAML stream into objects keyed by kind, namespace and name.
func decode(t *testing.T, stream string) map[string]*unstructured.Unstructured {
	t.Helper()
	objs := map[string]*unstructured.Unstructured{}
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(stream), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decoding rendered YAML: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		k := key(u)
		if _, dup := objs[k]; dup {
			t.Fatalf("%s rendered twice", k)
		}
		objs[k] = u
	}
	return objs
}

func key(u *unstructured.Unstructured) string {
	return fmt.Sprintf("%s %s/%s", u.GroupVersionKind().GroupKind(), u.GetNamespace(), u.GetName())
}

// comparable drops what may differ by design: the Helm-only labels, the
// config checksum that rolls the scheduler on `helm upgrade`, and the
// Namespace object (Helm creates the release namespace: --create-namespace).
func comparable(objs map[string]*unstructured.Unstructured) map[string]map[string]any {
	out := map[string]map[string]any{}
	for k, u := range objs {
		if u.GetKind() == "Namespace" {
			continue
		}
		u = u.DeepCopy()
		labels := u.GetLabels()
		for _, l := range helmOnlyLabels {
			delete(labels, l)
		}
		u.SetLabels(labels)
		if len(labels) == 0 {
			unstructured.RemoveNestedField(u.Object, "metadata", "labels")
		}
		if ann, ok, _ := unstructured.NestedStringMap(u.Object, "spec", "template", "metadata", "annotations"); ok {
			delete(ann, "checksum/config")
			if len(ann) == 0 {
				unstructured.RemoveNestedField(u.Object, "spec", "template", "metadata", "annotations")
			} else {
				_ = unstructured.SetNestedStringMap(u.Object, ann, "spec", "template", "metadata", "annotations")
			}
		}
		out[k] = u.Object
	}
	return out
}

// TestChartRendersManifests is the one-source-of-truth check: with default
// values the chart renders exactly the objects of `kubectl kustomize
// manifests/`, and with values-local.yaml those of manifests/overlays/local
// (what make demo and the e2e suite install).
func TestChartRendersManifests(t *testing.T) {
	for name, tc := range map[string]struct {
		helmArgs  []string
		kustomize string
	}{
		"defaults":      {kustomize: "../manifests"},
		"local cluster": {helmArgs: []string{"-f", filepath.Join(chartDir, "values-local.yaml")}, kustomize: "../manifests/overlays/local"},
		"DRA":           {helmArgs: []string{"--set", "devicePlugin.dra.enabled=true"}, kustomize: "../manifests/overlays/dra"},
	} {
		t.Run(name, func(t *testing.T) {
			want := comparable(kustomize(t, tc.kustomize))
			got := comparable(mustHelmTemplate(t, tc.helmArgs...))
			if len(want) < 10 {
				t.Fatalf("kustomize rendered only %d objects: %v", len(want), keys(want))
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("helm template differs from kubectl kustomize %s (-kustomize +helm):\n%s", tc.kustomize, diff)
			}
		})
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestChartCopiesMatchSources: files Helm needs inside the chart directory
// (it reads nothing outside it) are byte copies of their sources.
func TestChartCopiesMatchSources(t *testing.T) {
	for copyPath, src := range map[string]string{
		"tessera/crds/scheduling.x-k8s.io_podgroups.yaml": "../manifests/base/crds/scheduling.x-k8s.io_podgroups.yaml",
		"tessera/dashboards/tessera-dashboard.json":       "../manifests/grafana/tessera-dashboard.json",
	} {
		a, err := os.ReadFile(copyPath)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("charts/%s differs from %s: run `make manifests`", copyPath, strings.TrimPrefix(src, "../"))
		}
	}
}

func TestLint(t *testing.T) {
	if out, err := run(t, "helm", "lint", "--strict", chartDir); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

func container(t *testing.T, objs map[string]*unstructured.Unstructured, objKey string) map[string]any {
	t.Helper()
	u := objs[objKey]
	if u == nil {
		t.Fatalf("%s not rendered; have %v", objKey, keys(objs))
	}
	cs, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers")
	if len(cs) != 1 {
		t.Fatalf("%s: %d containers", objKey, len(cs))
	}
	return cs[0].(map[string]any)
}

func args(c map[string]any) []string {
	s, _, _ := unstructured.NestedStringSlice(c, "args")
	return s
}

const (
	daemonSet   = "DaemonSet.apps tessera-system/tessera-device-plugin"
	deployment  = "Deployment.apps tessera-system/tessera-scheduler"
	pluginCM    = "ConfigMap tessera-system/tessera-device-plugin-config"
	schedCM     = "ConfigMap tessera-system/tessera-scheduler-config"
	pdb         = "PodDisruptionBudget.policy tessera-system/tessera-scheduler"
	dashboardCM = "ConfigMap tessera-system/tessera-grafana-dashboard"
)

// TestValuesReachTheObjects: each value an admin sets lands where the
// component reads it; the device plugin's own parser accepts the rendered
// sharing config.
func TestValuesReachTheObjects(t *testing.T) {
	t.Run("sharing", func(t *testing.T) {
		for name, tc := range map[string]struct {
			set  []string
			want config.Sharing
		}{
			"defaults":       {want: config.Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 4}},
			"slices per GPU": {set: []string{"devicePlugin.sharing.slicesPerGPU=2"}, want: config.Sharing{Strategy: api.StrategyTimeSlice, SlicesPerGPU: 2}},
			"mps by memory": {set: []string{"devicePlugin.sharing.strategy=mps", "devicePlugin.sharing.slicesPerGPU=0", "devicePlugin.sharing.sliceMemoryMiB=10240"},
				want: config.Sharing{Strategy: api.StrategyMPS, SliceMemoryMiB: 10240}},
			"mig": {set: []string{"devicePlugin.sharing.strategy=mig", "devicePlugin.sharing.slicesPerGPU=0"}, want: config.Sharing{Strategy: api.StrategyMIG}},
		} {
			t.Run(name, func(t *testing.T) {
				var helmArgs []string
				for _, s := range tc.set {
					helmArgs = append(helmArgs, "--set", s)
				}
				objs := mustHelmTemplate(t, helmArgs...)
				data, _, _ := unstructured.NestedString(objs[pluginCM].Object, "data", "config.yaml")
				cfg, err := config.Parse([]byte(data))
				if err != nil {
					t.Fatalf("the device plugin rejects the rendered config: %v\n%s", err, data)
				}
				if diff := cmp.Diff(tc.want, cfg.Sharing); diff != "" {
					t.Errorf("sharing (-want +got):\n%s", diff)
				}
			})
		}
	})

	t.Run("overrides", func(t *testing.T) {
		values := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(values, []byte(`devicePlugin:
  overrides:
  - name: mps-nodes
    nodeSelector: {tessera.dev/sharing: mps}
    sharing: {strategy: mps, sliceMemoryMiB: 10240}
`), 0o600); err != nil {
			t.Fatal(err)
		}
		objs := mustHelmTemplate(t, "-f", values)
		data, _, _ := unstructured.NestedString(objs[pluginCM].Object, "data", "config.yaml")
		cfg, err := config.Parse([]byte(data))
		if err != nil {
			t.Fatalf("the device plugin rejects the rendered config: %v\n%s", err, data)
		}
		got := cfg.Resolve(map[string]string{"tessera.dev/sharing": "mps"})
		if got.Sharing.Strategy != api.StrategyMPS || got.Sharing.SliceMemoryMiB != 10240 {
			t.Errorf("a node labelled tessera.dev/sharing=mps resolves to %+v, want mps with 10240 MiB slices", got)
		}
	})

	t.Run("scheduler", func(t *testing.T) {
		objs := mustHelmTemplate(t, "--set", "scheduler.replicas=1", "--set", "scheduler.featureGates=GenericWorkload=true",
			"--set", "scheduler.pluginArgs.scheduleTimeoutSeconds=90", "--set", "scheduler.leaderElection.enabled=false",
			"--set", "scheduler.image.tag=v9", "--set", "scheduler.priorityClassName=gpu-critical")
		c := container(t, objs, deployment)
		if !cmp.Equal(args(c), []string{"--config=/etc/tessera/scheduler-config.yaml", "--feature-gates=GenericWorkload=true"}) {
			t.Errorf("scheduler args %v", args(c))
		}
		if c["image"] != "ghcr.io/tessera-gpu/tessera-scheduler:v9" {
			t.Errorf("image %v", c["image"])
		}
		if pc, _, _ := unstructured.NestedString(objs[deployment].Object, "spec", "template", "spec", "priorityClassName"); pc != "gpu-critical" {
			t.Errorf("priorityClassName %q", pc)
		}
		if _, ok := objs[pdb]; ok {
			t.Errorf("a PodDisruptionBudget for one replica would block every drain of its node")
		}
		data, _, _ := unstructured.NestedString(objs[schedCM].Object, "data", "scheduler-config.yaml")
		var cfg struct {
			LeaderElection struct {
				LeaderElect bool `json:"leaderElect"`
			} `json:"leaderElection"`
			Profiles []struct {
				PluginConfig []struct {
					Name string         `json:"name"`
					Args map[string]any `json:"args"`
				} `json:"pluginConfig"`
			} `json:"profiles"`
		}
		if err := utilyaml.Unmarshal([]byte(data), &cfg); err != nil {
			t.Fatalf("scheduler config: %v\n%s", err, data)
		}
		if cfg.LeaderElection.LeaderElect {
			t.Errorf("leaderElect still true")
		}
		if len(cfg.Profiles) != 1 || len(cfg.Profiles[0].PluginConfig) != 1 || cfg.Profiles[0].PluginConfig[0].Name != "Tessera" ||
			fmt.Sprint(cfg.Profiles[0].PluginConfig[0].Args["scheduleTimeoutSeconds"]) != "90" {
			t.Errorf("plugin args not in the profile:\n%s", data)
		}
	})

	t.Run("metrics off", func(t *testing.T) {
		c := container(t, mustHelmTemplate(t, "--set", "devicePlugin.metrics.enabled=false"), daemonSet)
		if a := args(c); a[len(a)-1] != "--metrics-address=" {
			t.Errorf("device plugin args %v: want the metrics listener off", a)
		}
		for _, f := range []string{"ports", "livenessProbe", "readinessProbe"} {
			if _, ok := c[f]; ok {
				t.Errorf("%s rendered with the metrics listener off", f)
			}
		}
	})

	t.Run("service monitors", func(t *testing.T) {
		objs := mustHelmTemplate(t, "--set", "metrics.serviceMonitor.enabled=true", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
		for _, k := range []string{"ServiceMonitor.monitoring.coreos.com tessera-system/tessera-scheduler", "ServiceMonitor.monitoring.coreos.com tessera-system/tessera-device-plugin",
			"Service tessera-system/tessera-scheduler-metrics", "Service tessera-system/tessera-device-plugin-metrics"} {
			if objs[k] == nil {
				t.Errorf("%s not rendered; have %v", k, keys(objs))
			}
		}
	})

	t.Run("grafana dashboard", func(t *testing.T) {
		objs := mustHelmTemplate(t, "--set", "grafana.dashboard.enabled=true")
		data, _, _ := unstructured.NestedString(objs[dashboardCM].Object, "data", "tessera-dashboard.json")
		if data != strings.TrimRight(string(grafana.Dashboard), "\n") {
			t.Errorf("the dashboard ConfigMap does not hold manifests/grafana/tessera-dashboard.json")
		}
		if objs[dashboardCM].GetLabels()["grafana_dashboard"] != "1" {
			t.Errorf("dashboard ConfigMap labels %v: the Grafana sidecar looks for grafana_dashboard", objs[dashboardCM].GetLabels())
		}
	})
}

// TestBadValuesFailClearly: values that would give a broken install stop
// helm before anything reaches the cluster, with a message naming the value.
func TestBadValuesFailClearly(t *testing.T) {
	for name, tc := range map[string]struct {
		set  []string
		want string
	}{
		"unknown strategy":                {set: []string{"devicePlugin.sharing.strategy=vgpu"}, want: `devicePlugin.sharing.strategy: "vgpu" is not one of timeslice, mps, mig`},
		"slices and memory":               {set: []string{"devicePlugin.sharing.sliceMemoryMiB=4096"}, want: "set slicesPerGPU or sliceMemoryMiB, not both"},
		"neither":                         {set: []string{"devicePlugin.sharing.slicesPerGPU=0"}, want: "set slicesPerGPU or sliceMemoryMiB"},
		"mig with slices":                 {set: []string{"devicePlugin.sharing.strategy=mig"}, want: "with strategy mig set neither"},
		"replicas without lease":          {set: []string{"scheduler.leaderElection.enabled=false"}, want: "scheduler.replicas > 1 needs scheduler.leaderElection.enabled=true"},
		"service monitor without its CRD": {set: []string{"metrics.serviceMonitor.enabled=true"}, want: "needs the Prometheus Operator's ServiceMonitor CRD"},
	} {
		t.Run(name, func(t *testing.T) {
			var helmArgs []string
			for _, s := range tc.set {
				helmArgs = append(helmArgs, "--set", s)
			}
			_, err := helmTemplate(t, helmArgs...)
			if err == nil {
				t.Fatalf("helm template accepted %v", tc.set)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not say %q:\n%v", tc.want, err)
			}
		})
	}
}
