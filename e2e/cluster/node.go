package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The real node's pod network: a bridge with the host address PodGateway
// in PodSubnet; pods get addresses from podRangeStart on.
const (
	PodBridge     = "tessera0"
	PodSubnet     = "10.244.0.0/24"
	PodGateway    = "10.244.0.1"
	podRangeStart = "10.244.0.2"
)

// makePodBridge creates the pod bridge with the host's address on it (the
// CNI bridge plugin would create it without one, since pods get no
// gateway), after removing one a crashed run left.
func makePodBridge() error {
	_ = exec.Command("ip", "link", "delete", PodBridge).Run()
	for _, args := range [][]string{
		{"link", "add", PodBridge, "type", "bridge"},
		{"addr", "add", PodGateway + "/24", "dev", PodBridge},
		{"link", "set", PodBridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("pod bridge: ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// PauseImage is the sandbox image of the real node, built from our own
// tiny binary so nothing is pulled.
const PauseImage = "localhost/tessera/pause:dev"

// nodePackages are the Debian packages the real node needs.
var nodePackages = []struct{ pkg, file string }{
	{"containerd", "/usr/bin/containerd"},
	{"runc", "/usr/sbin/runc"},
	{"containernetworking-plugins", "/usr/lib/cni/loopback"},
}

// ensureNodePackages installs containerd, runc and the CNI plugins when
// missing.
func ensureNodePackages(ctx context.Context, logf func(string, ...any)) error {
	var missing []string
	for _, p := range nodePackages {
		if _, err := os.Stat(p.file); err != nil {
			missing = append(missing, p.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("the real node needs %s and apt-get is not available: install them with your package manager", strings.Join(missing, ", "))
	}
	logf("installing %s with apt-get", strings.Join(missing, ", "))
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, lastLines(string(out), 10))
		}
		return nil
	}
	if err := run("update", "-qq"); err != nil {
		return fmt.Errorf("%w\napt is unavailable: install %s by hand, then retry", err, strings.Join(missing, ", "))
	}
	if err := run(append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...); err != nil {
		return fmt.Errorf("%w\ninstall %s by hand, then retry", err, strings.Join(missing, ", "))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// The real node's runtimes (Config.Containerd): containerd v2 (the
// default, "" or ContainerdV2), built from the Go module proxy, which has
// CDI (the DRA driver's claims need it); Debian 12's containerd 1.6
// (Containerd16), which has none.
const (
	ContainerdV2 = "v2"
	Containerd16 = "1.6"
)

// CDISpecDir is where the real node's containerd v2 reads CDI specs, under
// the cluster's directory.
func (c *Cluster) CDISpecDir() string { return filepath.Join(c.Dir, "containerd", "cdi") }

func (c *Cluster) containerdSocket() string {
	return filepath.Join(c.Dir, "containerd", "containerd.sock")
}

func (c *Cluster) startContainerd(ctx context.Context) error {
	if err := ensureNodePackages(ctx, c.progress); err != nil {
		return err
	}
	if err := c.startRegistry(ctx); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	if err := makePodBridge(); err != nil {
		return err
	}
	base := filepath.Join(c.Dir, "containerd")
	cniConf := filepath.Join(base, "net.d")
	if err := os.MkdirAll(cniConf, 0o755); err != nil {
		return err
	}
	// Pods that do not use hostNetwork join the pod bridge, which has the
	// host address PodGateway and gives pods no default route: they reach
	// each other and the host (the kubelet's probes, cluster DNS, tests)
	// and nothing else, so no traffic leaves network namespaces the
	// cluster made.
	if err := os.WriteFile(filepath.Join(cniConf, "10-tessera.conflist"), []byte(fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "tessera-pods",
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": false,
    "ipMasq": false,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "rangeStart": %q}]], "dataDir": %q}
  }]
}
`, PodBridge, PodSubnet, podRangeStart, filepath.Join(base, "ipam"))), 0o644); err != nil {
		return err
	}
	bin, config := "/usr/bin/containerd", containerd16Config(filepath.Join(base, "root"), filepath.Join(base, "state"), c.containerdSocket(), cniConf, c.registryHostsDir())
	var env []string
	switch c.cfg.Containerd {
	case Containerd16:
	case "", ContainerdV2:
		bin = c.tool("containerd")
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("containerd v2 not built (make tools): %w", err)
		}
		if err := os.MkdirAll(c.CDISpecDir(), 0o755); err != nil {
			return err
		}
		config = containerd2Config(filepath.Join(base, "root"), filepath.Join(base, "state"), c.containerdSocket(), cniConf, c.CDISpecDir(), c.registryHostsDir())
		// containerd starts the runc shim it finds on PATH: its own, not
		// Debian's 1.6 one.
		env = []string{"PATH=" + filepath.Dir(bin) + string(os.PathListSeparator) + os.Getenv("PATH")}
	default:
		return fmt.Errorf("unknown containerd %q: want %q (the default) or %q (Debian's)", c.cfg.Containerd, ContainerdV2, Containerd16)
	}
	cfgPath := filepath.Join(base, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return err
	}
	p, err := c.startProc("containerd", bin, []string{"--config", cfgPath}, env)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.state.ContainerdSocket = c.containerdSocket()
	err = c.state.save(c.Dir)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := waitSocket(ctx, p, c.containerdSocket(), 60*time.Second); err != nil {
		return err
	}
	images := append([]Image{{Ref: PauseImage, Binary: c.cfg.PauseBinary, User: "65535"}}, c.cfg.Images...)
	for _, img := range images {
		if img.Binary == "" {
			return fmt.Errorf("image %s: no binary given", img.Ref)
		}
		tarball := filepath.Join(c.Dir, "images", strings.NewReplacer("/", "_", ":", "_").Replace(img.Ref)+".tar")
		if err := BuildImage(img, tarball); err != nil {
			return err
		}
		if err := c.ImportImage(ctx, tarball); err != nil {
			return err
		}
		if img.Publish != "" {
			if _, err := c.PublishImage(ctx, img, img.Publish); err != nil {
				return err
			}
		}
	}
	return nil
}

// containerd16Config is the real node's containerd 1.6 configuration
// (version 2 of the file format).
func containerd16Config(root, state, socket, cniConf, registryHosts string) string {
	return fmt.Sprintf("version = 2\n%s", containerdHeader(root, state, socket)) + fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # runc fails with "can't get final child's PID from pipe" when it may not
  # lower oom_score_adj, as in unprivileged or nested environments.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
`, PauseImage, cniConf, registryHosts)
}

// containerd2Config is the same node on containerd v2 (version 3 of the
// file format: the CRI plugin split into images and runtime), with CDI
// specs read from cdiDir only (v2 always enables CDI).
func containerd2Config(root, state, socket, cniConf, cdiDir, registryHosts string) string {
	return fmt.Sprintf("version = 3\n%s", containerdHeader(root, state, socket)) + fmt.Sprintf(`[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %q
[plugins.'io.containerd.cri.v1.runtime']
  # As for 1.6: runc may not lower oom_score_adj in nested environments.
  restrict_oom_score_adj = true
  disable_apparmor = true
  cdi_spec_dirs = [%q]
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = %q
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
`, PauseImage, registryHosts, cdiDir, cniConf)
}

// containerdHeader is what both file formats share: the node's own root,
// state and sockets under the cluster directory.
func containerdHeader(root, state, socket string) string {
	return fmt.Sprintf(`root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = "warn"
`, root, state, socket, socket+".ttrpc")
}

// ImportImage imports an image tarball into the real node's containerd.
func (c *Cluster) ImportImage(ctx context.Context, tarball string) error {
	cmd := exec.CommandContext(ctx, "ctr", "--address", c.containerdSocket(), "--namespace", "k8s.io", "images", "import", "--no-unpack", tarball)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("importing %s: %w\n%s", tarball, err, out)
	}
	return nil
}

func waitSocket(ctx context.Context, p proc, path string, timeout time.Duration) error {
	return poll(ctx, 100*time.Millisecond, timeout, func(context.Context) (bool, error) {
		if !p.alive() {
			return false, fmt.Errorf("%s exited; see %s:\n%s", p.Name, p.Log, tail(p.Log, 15))
		}
		conn, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	}, func() error {
		return fmt.Errorf("%s did not open %s within %s; see %s", p.Name, path, timeout, p.Log)
	})
}

func (c *Cluster) kubeletRoot() string { return filepath.Join(c.Dir, "kubelet") }

// PodResourcesSocket is the real node's kubelet PodResources API socket.
func (c *Cluster) PodResourcesSocket() string {
	return filepath.Join(c.kubeletRoot(), "pod-resources", "kubelet.sock")
}

func (c *Cluster) startKubelet(ctx context.Context) error {
	if err := os.MkdirAll(c.kubeletRoot(), 0o755); err != nil {
		return err
	}
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
containerRuntimeEndpoint: unix://%s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %s
authorization:
  mode: AlwaysAllow
# This machine may run cgroup v1, and the node shares it with everything
# else: no QoS cgroups, no node allocatable enforcement.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
# Tests fill the disk with images and logs; do not evict on a busy dev box.
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerNode: true
# Cluster DNS (CoreDNS, dns.go) listens on the pod bridge's host address.
clusterDNS: [%s]
clusterDomain: %s
staticPodPath: ""
fileCheckFrequency: 5s
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
maxPods: 110
`, c.ports.kubelet, c.ports.kubeletHealthz, c.containerdSocket(), filepath.Join(c.Dir, "pki", "ca.crt"), PodGateway, ClusterDomain)
	cfgPath := filepath.Join(c.Dir, "kubelet-config.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return err
	}
	p, err := c.startProc("kubelet", c.tool("kubelet"), []string{
		"--config", cfgPath,
		"--kubeconfig", c.KubeconfigFor("node"),
		"--root-dir", c.kubeletRoot(),
		"--hostname-override", c.RealNodeName,
		"--node-ip", "127.0.0.1",
		"--node-labels", "tessera.dev/real-node=true,tessera.dev/gpu-node=true",
		"--v", "1",
	}, nil)
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, p, fmt.Sprintf("http://127.0.0.1:%d/healthz", c.ports.kubeletHealthz), nil, 90*time.Second); err != nil {
		return err
	}
	return c.setRealNodeAddress(ctx)
}

// setRealNodeAddress gives the real node the address 127.0.0.1, so the
// apiserver reaches its kubelet (logs, exec) on loopback. The kubelet
// refuses a loopback --node-ip and then leaves status.addresses alone, so
// the address set here stays.
func (c *Cluster) setRealNodeAddress(ctx context.Context) error {
	client, err := c.Client()
	if err != nil {
		return err
	}
	patch := []byte(fmt.Sprintf(`{"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"},{"type":"Hostname","address":%q}]}}`, c.RealNodeName))
	// The patch fails until the kubelet has registered the node.
	var last error
	return poll(ctx, 200*time.Millisecond, 60*time.Second, func(ctx context.Context) (bool, error) {
		_, last = client.CoreV1().Nodes().Patch(ctx, c.RealNodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
		return last == nil, nil
	}, func() error {
		return fmt.Errorf("node %s did not register: %w", c.RealNodeName, last)
	})
}

// RestartKubelet stops the real node's kubelet and starts it again with the
// same configuration, as an operator upgrading it would.
func (c *Cluster) RestartKubelet(ctx context.Context) error {
	c.mu.Lock()
	var kept []proc
	var old *proc
	for i, p := range c.state.Procs {
		if p.Name == "kubelet" {
			old = &c.state.Procs[i]
			continue
		}
		kept = append(kept, p)
	}
	c.mu.Unlock()
	if old == nil {
		return errors.New("no kubelet was started in this cluster")
	}
	stopProc(*old, 10*time.Second)
	c.mu.Lock()
	c.state.Procs = kept
	err := c.state.save(c.Dir)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.startKubelet(ctx)
}
