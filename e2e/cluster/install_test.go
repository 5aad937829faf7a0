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
		if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(installKustomization(rel, "/var/lib/kubelet/pod-resources", "16443", gates)), 0o644); err != nil {
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
