package cluster

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

func TestSchedulerGatesPatch(t *testing.T) {
	for _, bad := range []string{"GenericWorkload", "GenericWorkload=yes", "genericWorkload=true", "A=true,", `A=true"}`, "A B=true"} {
		if _, err := schedulerGatesPatch(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if p, err := schedulerGatesPatch("  "); err != nil || p != "" {
		t.Errorf("empty value: %q, %v", p, err)
	}

	// Render the install (the local overlay plus this cluster's patches)
	// with kubectl kustomize, when make tools has built a kubectl.
	kubectl := filepath.Join(os.Getenv("TESSERA_TOOLS_DIR"), "kubectl")
	if _, err := os.Stat(kubectl); os.Getenv("TESSERA_TOOLS_DIR") == "" || err != nil {
		t.Skip("no kubectl in TESSERA_TOOLS_DIR: not rendering the install")
	}
	for _, v := range []string{"", "GenericWorkload=true, TopologyAwareWorkloadScheduling=true"} {
		gates, err := schedulerGatesPatch(v)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		overlay, err := filepath.Abs("../../manifests/overlays/local")
		if err != nil {
			t.Fatal(err)
		}
		rel, err := filepath.Rel(dir, overlay)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(installSpec{overlay: rel, podResourcesDir: "/var/lib/kubelet/pod-resources", port: "16443", gates: gates}.kustomization()), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(kubectl, "kustomize", dir).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl kustomize (gates %q): %v\n%s", v, err, out)
		}
		var args []string
		for _, doc := range strings.Split(string(out), "\n---\n") {
			var d appsv1.Deployment
			if err := yaml.Unmarshal([]byte(doc), &d); err != nil || d.Kind != "Deployment" || d.Name != "tessera-scheduler" {
				continue
			}
			args = d.Spec.Template.Spec.Containers[0].Args
		}
		if args == nil {
			t.Fatalf("gates %q: no tessera-scheduler Deployment rendered", v)
		}
		want := "--feature-gates=GenericWorkload=true,TopologyAwareWorkloadScheduling=true"
		has := false
		for _, a := range args {
			has = has || a == want
			if strings.HasPrefix(a, "--feature-gates") && a != want {
				t.Errorf("gates %q: unexpected arg %q", v, a)
			}
		}
		if has != (v != "") {
			t.Errorf("gates %q: args %q", v, args)
		}
	}
}

// TestDRAInstallRenders renders the local overlay with the DRA component
// and this cluster's paths: the node agent runs with --dra, its plugin
// directory mounted at the host's path (the kubelet reaches the socket by
// the path the driver registers), and the three DeviceClasses come along.
func TestDRAInstallRenders(t *testing.T) {
	kubectl := filepath.Join(os.Getenv("TESSERA_TOOLS_DIR"), "kubectl")
	if _, err := os.Stat(kubectl); os.Getenv("TESSERA_TOOLS_DIR") == "" || err != nil {
		t.Skip("no kubectl in TESSERA_TOOLS_DIR: not rendering the install")
	}
	dir := t.TempDir()
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := filepath.Rel(dir, a)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	k := installSpec{overlay: abs("../../manifests/overlays/local"), draComponent: abs("../../" + DRAComponent),
		podResourcesDir: "/c/kubelet/pod-resources", port: "16443", kubeletDir: "/c/kubelet", cdiDir: "/c/containerd/cdi"}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k.kustomization()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(kubectl, "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	classes := 0
	var ds *appsv1.DaemonSet
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "DeviceClass":
			classes++
		case "DaemonSet":
			ds = &appsv1.DaemonSet{}
			if err := yaml.Unmarshal([]byte(doc), ds); err != nil {
				t.Fatal(err)
			}
		}
	}
	if classes != 3 || ds == nil {
		t.Fatalf("%d DeviceClasses and DaemonSet %v rendered, want 3 and the node agent", classes, ds != nil)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--dra", "--dra-plugin-dir=/c/kubelet/plugins/gpu.tessera.dev", "--fake-gpus="} {
		if !strings.Contains(args, want) {
			t.Errorf("node agent args %q lack %q", args, want)
		}
	}
	host := map[string]string{}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.HostPath != nil {
			host[v.Name] = v.HostPath.Path
		}
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	want := map[string][2]string{
		"dra-plugins":  {"/c/kubelet/plugins", "/c/kubelet/plugins"},
		"dra-registry": {"/c/kubelet/plugins_registry", "/var/lib/kubelet/plugins_registry"},
		"cdi":          {"/c/containerd/cdi", "/var/run/cdi"},
	}
	for name, w := range want {
		if host[name] != w[0] || mounts[name] != w[1] {
			t.Errorf("volume %s: host %q mounted at %q, want %q at %q", name, host[name], mounts[name], w[0], w[1])
		}
	}
}
