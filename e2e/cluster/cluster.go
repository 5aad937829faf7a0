// Package cluster runs a real local Kubernetes cluster for Tessera's
// end-to-end tests and demo: etcd, kube-apiserver and kube-controller-manager
// on loopback, one real node (containerd + runc + kubelet) and any number of
// simulated nodes driven by kwok. It needs root (containerd and the kubelet
// do) but no container registry and no Docker engine: images are OCI
// tarballs built from our own static binaries and imported into the node's
// containerd.
//
// Every process the harness starts is recorded, with its PID and start
// time, in the cluster directory's state file as soon as it starts, so Down
// stops exactly those processes — also after a crashed Up.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// KubernetesVersion is the version of the components the cluster runs.
const KubernetesVersion = "v1.37.2"

// Config says what cluster to start.
type Config struct {
	// Dir holds all state, certificates, logs and data of the cluster.
	Dir string
	// ToolsDir holds etcd, kube-apiserver, kube-controller-manager, kubelet
	// and kwok (make tools).
	ToolsDir string
	// APIServerPort is the kube-apiserver's port on 127.0.0.1; 0 picks a
	// free one.
	APIServerPort int
	// DefaultScheduler runs the stock kube-scheduler beside Tessera's.
	DefaultScheduler bool
	// RealNode starts containerd and a kubelet as node RealNodeName.
	RealNode     bool
	RealNodeName string
	// Images are imported into the real node's containerd. The pause image
	// is always added.
	Images []Image
	// PauseBinary is a static binary that waits for SIGTERM; it becomes the
	// sandbox (pause) image.
	PauseBinary string
	// SimulatedNodes is the number of kwok nodes.
	SimulatedNodes int
	// Topology labels simulated nodes with topology domains.
	Topology Topology
	// GPUs, when set, gives every simulated node GPU slice capacity and an
	// inventory annotation.
	GPUs *SimulatedGPUs
	// LeaderWorkerSet installs the LWS CRDs and runs the real LWS controller
	// (make tools builds it) with its webhooks on loopback.
	LeaderWorkerSet bool
	// Containerd is the real node's container runtime: "" or ContainerdV2
	// for containerd v2 built from the Go module proxy (make tools), which
	// reads CDI specs from CDISpecDir; Containerd16 for Debian's
	// containerd 1.6 (no CDI, so no DRA claims).
	Containerd string
	// Progress receives one line per step; nil discards.
	Progress func(format string, args ...any)
}

// Image is a container image made from one static binary.
type Image struct {
	// Ref is the image reference pods use, e.g. localhost/tessera/scheduler:dev.
	Ref string
	// Binary is the host path of the binary, placed at /<basename>.
	Binary string
	// Files are extra host files to place in the image: image path → host path.
	Files map[string]string
	// Entrypoint defaults to the binary.
	Entrypoint []string
	// User defaults to 65532 (nonroot); set "0" where root is needed.
	User string
	// Publish, when set, is a MirroredRegistry reference the image is
	// also pushed under to the cluster's registry, so manifests that name
	// it pull it (e.g. the examples' ghcr.io/tessera-gpu/...:latest).
	Publish string
}

// Cluster is a running local cluster.
type Cluster struct {
	Dir            string
	Kubeconfig     string
	APIServerURL   string
	RealNodeName   string
	SimulatedNodes []string

	cfg    Config
	tokens map[string]string
	mu     sync.Mutex
	state  *state
	ports  ports
}

type ports struct {
	etcdClient, etcdPeer, apiserver, kubelet, kubeletHealthz, kwok int
}

// Token returns the bearer token of a built-in identity: admin,
// kube-scheduler, kube-controller-manager, kwok, node.
func (c *Cluster) Token(identity string) string { return c.tokens[identity] }

// RESTConfig returns an admin client config.
func (c *Cluster) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            c.APIServerURL,
		BearerToken:     c.tokens["admin"],
		TLSClientConfig: rest.TLSClientConfig{CAFile: filepath.Join(c.Dir, "pki", "ca.crt")},
		QPS:             500,
		Burst:           1000,
	}
}

// Client returns an admin clientset.
func (c *Cluster) Client() (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(c.RESTConfig())
}

func (c *Cluster) progress(format string, args ...any) {
	if c.cfg.Progress != nil {
		c.cfg.Progress(format, args...)
	}
}

// Up starts a cluster as cfg says and waits until every node is Ready. On
// error, whatever was started is stopped again.
func Up(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.Dir == "" || cfg.ToolsDir == "" {
		return nil, errors.New("cluster: Dir and ToolsDir must be set")
	}
	if cfg.RealNodeName == "" {
		cfg.RealNodeName = "tessera-node"
	}
	if err := preflight(cfg); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cfg.Dir = dir
	if st, err := loadState(dir); err == nil {
		for _, p := range st.Procs {
			if p.alive() {
				return nil, fmt.Errorf("a cluster is already running in %s (%s, pid %d): stop it first with `make cluster-down` (or cluster.Down)", dir, p.Name, p.PID)
			}
		}
	}
	// Leftovers of a crashed run would confuse etcd and the kubelet.
	if err := Down(dir); err != nil {
		return nil, fmt.Errorf("cleaning up a previous run in %s: %w", dir, err)
	}
	for _, d := range []string{"logs", "pki", "etcd", "kubelet", "containerd", "images", "kwok", "registry", "dns"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	c := &Cluster{Dir: dir, cfg: cfg, state: &state{}, RealNodeName: cfg.RealNodeName}
	if err := c.state.save(dir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if derr := c.Down(); derr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, derr)
			}
		}
	}()
	if err := c.allocatePorts(); err != nil {
		return nil, err
	}
	c.APIServerURL = fmt.Sprintf("https://127.0.0.1:%d", c.ports.apiserver)
	c.Kubeconfig = filepath.Join(dir, "kubeconfig")

	start := time.Now()
	step := func(name string, f func(context.Context) error) error {
		t := time.Now()
		c.progress("%-28s ...", name)
		if err := f(ctx); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		c.progress("%-28s done in %s", name, time.Since(t).Round(100*time.Millisecond))
		return nil
	}
	var nodeSetup sync.WaitGroup
	var nodeErr error
	if cfg.RealNode {
		// containerd and images do not need the control plane: overlap them.
		nodeSetup.Add(1)
		go func() {
			defer nodeSetup.Done()
			nodeErr = c.startContainerd(ctx)
		}()
	}
	if err := step("certificates", c.makePKI); err != nil {
		return nil, err
	}
	if err := step("etcd", c.startEtcd); err != nil {
		return nil, err
	}
	if err := step("kube-apiserver", c.startAPIServer); err != nil {
		return nil, err
	}
	if err := step("kube-controller-manager", c.startControllerManager); err != nil {
		return nil, err
	}
	if cfg.DefaultScheduler {
		if err := step("kube-scheduler (default)", c.startDefaultScheduler); err != nil {
			return nil, err
		}
	}
	if cfg.RealNode {
		if err := step("containerd and images", func(context.Context) error { nodeSetup.Wait(); return nodeErr }); err != nil {
			return nil, err
		}
		if err := step("kubelet (real node)", c.startKubelet); err != nil {
			return nil, err
		}
		if err := step("cluster DNS (CoreDNS)", c.startDNS); err != nil {
			return nil, err
		}
	}
	if cfg.SimulatedNodes > 0 {
		if err := step(fmt.Sprintf("kwok (%d simulated nodes)", cfg.SimulatedNodes), c.startKwok); err != nil {
			return nil, err
		}
	}
	if err := step("all nodes Ready", c.waitNodesReady); err != nil {
		return nil, err
	}
	if cfg.LeaderWorkerSet {
		if err := step("LeaderWorkerSet controller", c.StartLeaderWorkerSet); err != nil {
			return nil, err
		}
	}
	c.progress("cluster up in %s; kubeconfig: %s", time.Since(start).Round(100*time.Millisecond), c.Kubeconfig)
	return c, nil
}

// Attach returns a handle on a cluster already running in dir.
func Attach(dir string) (*Cluster, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	st, err := loadState(dir)
	if err != nil {
		return nil, err
	}
	running := false
	for _, p := range st.Procs {
		if p.Name == "kube-apiserver" && p.alive() {
			running = true
		}
	}
	if !running {
		return nil, fmt.Errorf("no cluster is running in %s (start one with `make cluster-up`)", dir)
	}
	c := &Cluster{Dir: dir, state: st, Kubeconfig: filepath.Join(dir, "kubeconfig")}
	if err := c.loadAccess(); err != nil {
		return nil, err
	}
	return c, nil
}

// Down stops the cluster's processes and removes its directory.
func (c *Cluster) Down() error { return Down(c.Dir) }

func preflight(cfg Config) error {
	if os.Geteuid() != 0 && cfg.RealNode {
		return errors.New("the local cluster runs containerd and a kubelet, which need root: run as root (e.g. `sudo make cluster-up`)")
	}
	for _, t := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "coredns", "registry", "kwok"} {
		if (t == "kubelet" || t == "coredns" || t == "registry") && !cfg.RealNode || t == "kwok" && cfg.SimulatedNodes == 0 || t == "kube-scheduler" && !cfg.DefaultScheduler {
			continue
		}
		if _, err := os.Stat(filepath.Join(cfg.ToolsDir, t)); err != nil {
			return fmt.Errorf("%s is missing in %s: build the tools with `make tools`", t, cfg.ToolsDir)
		}
	}
	if cfg.APIServerPort != 0 {
		if err := portFree(cfg.APIServerPort); err != nil {
			return fmt.Errorf("port %d for kube-apiserver is taken (%v): stop what listens there (`ss -ltnp 'sport = :%d'`) or choose another port (APISERVER_PORT=...)", cfg.APIServerPort, err, cfg.APIServerPort)
		}
	}
	if cfg.RealNode {
		if conn, err := net.DialTimeout("unix", "/var/lib/kubelet/device-plugins/kubelet.sock", time.Second); err == nil {
			conn.Close()
			return errors.New("another kubelet already serves /var/lib/kubelet/device-plugins/kubelet.sock on this machine; only one real kubelet fits on a machine: stop it (`make cluster-down`) first")
		}
	}
	return nil
}

func portFree(port int) error {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	return l.Close()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) allocatePorts() error {
	seen := map[int]bool{}
	pick := func() (int, error) {
		for {
			p, err := freePort()
			if err != nil {
				return 0, err
			}
			if !seen[p] {
				seen[p] = true
				return p, nil
			}
		}
	}
	var err error
	for _, p := range []*int{&c.ports.etcdClient, &c.ports.etcdPeer, &c.ports.kubelet, &c.ports.kubeletHealthz, &c.ports.kwok} {
		if *p, err = pick(); err != nil {
			return err
		}
	}
	c.ports.apiserver = c.cfg.APIServerPort
	if c.ports.apiserver == 0 {
		if c.ports.apiserver, err = pick(); err != nil {
			return err
		}
	}
	return nil
}
