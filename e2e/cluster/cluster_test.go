package cluster

import (
	"archive/tar"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/tessera-gpu/tessera/api"
)

func TestTopologyLabels(t *testing.T) {
	tests := map[string]struct {
		topo Topology
		node int
		want map[string]string
	}{
		"defaults: every node its own domain": {
			topo: Topology{}, node: 5,
			want: map[string]string{api.LabelClique: "clique-5", api.LabelRack: "rack-5", api.LabelZone: "zone-5"},
		},
		"4 per clique, 2 cliques per rack, 4 racks per zone": {
			topo: Topology{NodesPerClique: 4, CliquesPerRack: 2, RacksPerZone: 4}, node: 37,
			// clique 37/4=9, rack 9/2=4, zone 4/4=1
			want: map[string]string{api.LabelClique: "clique-9", api.LabelRack: "rack-4", api.LabelZone: "zone-1"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.topo.Labels(tc.node)); diff != "" {
				t.Errorf("Labels(%d) (-want +got):\n%s", tc.node, diff)
			}
		})
	}
}

func TestSimulatedNodeInventory(t *testing.T) {
	for _, nvlink := range []string{"all", "pairs", "none"} {
		t.Run(nvlink, func(t *testing.T) {
			gpus := &SimulatedGPUs{Count: 8, SlicesPerGPU: 4, Product: "NVIDIA H100 80GB HBM3", MemoryMiB: 81559, NVLink: nvlink}
			node, err := simulatedNode(3, Topology{NodesPerClique: 2}, gpus)
			if err != nil {
				t.Fatal(err)
			}
			inv, err := api.ParseInventory(node.Annotations[api.AnnotationInventory])
			if err != nil {
				t.Fatalf("inventory does not parse: %v", err)
			}
			if got := node.Status.Allocatable[api.ResourceName]; got.Value() != 32 {
				t.Errorf("allocatable slices = %s, want 32", got.String())
			}
			if node.Labels[api.LabelClique] != "clique-1" || inv.GPUs[0].Clique != "clique-1" {
				t.Errorf("clique label %q, GPU clique %q, want clique-1", node.Labels[api.LabelClique], inv.GPUs[0].Clique)
			}
			wantPeers := map[string]int{"all": 7, "pairs": 1, "none": 0}[nvlink]
			for _, g := range inv.GPUs {
				if len(g.NVLinkPeers) != wantPeers {
					t.Errorf("GPU %s has %d NVLink peers, want %d", g.UUID, len(g.NVLinkPeers), wantPeers)
				}
			}
			if node.Annotations[KwokAnnotation] != "fake" {
				t.Errorf("node lacks the kwok annotation")
			}
		})
	}
}

func TestBuildImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "tool")
	if err := os.WriteFile(bin, []byte("#!binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "model.bin")
	if err := os.WriteFile(cfgFile, []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.tar")
	if err := BuildImage(Image{Ref: "localhost/tessera/tool:dev", Binary: bin, Files: map[string]string{"/models/m.bin": cfgFile}}, out); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, nil)
	if err != nil {
		t.Fatalf("reading the tarball back: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"/tool"}, cf.Config.Entrypoint); diff != "" {
		t.Errorf("entrypoint (-want +got):\n%s", diff)
	}
	if cf.Config.User != "65532" || cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("user %q os %q arch %q, want 65532 linux amd64", cf.Config.User, cf.OS, cf.Architecture)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = string(b)
	}
	for name, want := range map[string]string{"tool": "#!binary", "models/m.bin": "weights"} {
		if got[name] != want {
			t.Errorf("layer file %s = %q, want %q", name, got[name], want)
		}
	}
	if !strings.Contains(got["etc/passwd"], "nonroot:x:65532") {
		t.Errorf("layer lacks the nonroot passwd entry")
	}
	if _, ok := got["tmp/"]; !ok {
		t.Errorf("layer lacks /tmp")
	}
	// Same inputs, same image: layers are reproducible.
	out2 := filepath.Join(dir, "img2.tar")
	if err := BuildImage(Image{Ref: "localhost/tessera/tool:dev", Binary: bin, Files: map[string]string{"/models/m.bin": cfgFile}}, out2); err != nil {
		t.Fatal(err)
	}
	img2, _ := tarball.ImageFromPath(out2, nil)
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("rebuilding gave digest %s, first build %s", d2, d1)
	}
}

func TestBuildImageRejectsRelativePath(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := BuildImage(Image{Ref: "localhost/x:dev", Binary: bin, Files: map[string]string{"rel/path": bin}}, filepath.Join(t.TempDir(), "o.tar"))
	if err == nil || !strings.Contains(err.Error(), "must be absolute") {
		t.Fatalf("error = %v, want one about an absolute path", err)
	}
}

// TestDownStopsRecordedProcessesOnly checks the crash-recovery path: a
// state file left by a dead Up names processes, Down stops exactly those
// (a recycled PID with another start time is left alone) and removes dir.
func TestDownStopsRecordedProcessesOnly(t *testing.T) {
	dir := t.TempDir()
	c := &Cluster{Dir: dir, state: &state{}}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := c.startProc("sleeper", "/bin/sleep", []string{"300"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	bystander, err := c.startProc("bystander", "/bin/sleep", []string{"300"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopProc(bystander, time.Second) })
	// Pretend the bystander's PID was recycled: the recorded start time
	// no longer matches, so it is not ours any more.
	c.state.Procs[1].StartTime++
	if err := c.state.save(dir); err != nil {
		t.Fatal(err)
	}
	if !p.alive() {
		t.Fatal("sleeper not running")
	}
	if err := Down(dir); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if p.alive() {
		t.Errorf("recorded process %d still running after Down", p.PID)
	}
	if !bystander.alive() {
		t.Errorf("Down killed pid %d whose start time did not match the record", bystander.PID)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Down", dir)
	}
	if err := Down(dir); err != nil {
		t.Errorf("second Down on a removed dir: %v", err)
	}
}

func TestPreflightMessages(t *testing.T) {
	tools := t.TempDir()
	err := preflight(Config{ToolsDir: tools})
	if err == nil || !strings.Contains(err.Error(), "make tools") {
		t.Fatalf("missing tools: error = %v, want a hint to run make tools", err)
	}
	for _, n := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
		if err := os.WriteFile(filepath.Join(tools, n), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	err = preflight(Config{ToolsDir: tools, APIServerPort: port})
	if err == nil || !strings.Contains(err.Error(), "is taken") || !strings.Contains(err.Error(), "APISERVER_PORT") {
		t.Fatalf("port taken: error = %v, want it to say the port is taken and how to choose another", err)
	}
	if err := preflight(Config{ToolsDir: tools}); err != nil {
		t.Errorf("control plane only, tools present: %v", err)
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/tmp/a\040b/c`); got != "/tmp/a b/c" {
		t.Errorf("unescapeMount = %q", got)
	}
}

func TestUpValidatesConfig(t *testing.T) {
	if _, err := Up(context.Background(), Config{}); err == nil {
		t.Fatal("Up with an empty config succeeded")
	}
}
