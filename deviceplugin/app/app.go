// Package app is the tessera-device-plugin command line: flags, wiring and
// the three modes (serve, discover, simulate). cmd/tessera-device-plugin
// only calls Main.
package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"k8s.io/utils/clock"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/deviceplugin"
	"github.com/tessera-gpu/tessera/deviceplugin/config"
	"github.com/tessera-gpu/tessera/deviceplugin/dra"
	"github.com/tessera-gpu/tessera/deviceplugin/nvml"
	"github.com/tessera-gpu/tessera/deviceplugin/simulate"
	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

const usage = `tessera-device-plugin: Tessera's kubelet device plugin for fractional GPU slices.

Usage:
  tessera-device-plugin [serve] [flags]      run the device plugin (default)
  tessera-device-plugin discover [--json]    discover GPUs through NVML, probe health once, register for Xid events, print
  tessera-device-plugin simulate [flags]     publish mock inventories for many (kwok) nodes

--fake-gpus syntax:
  ` + nvml.FakeSpecSyntax + `

Flags:
`

type flags struct {
	fs *flag.FlagSet

	kubeconfig, nodeName, configPath, fakeGPUs, nvmlLib string
	pluginDir, podResourcesSocket, metricsAddr          string
	cdiKind, mpsPipeDir                                 string
	draPluginDir, draRegistrarDir, cdiDir               string
	labelClique, jsonOut, noKube, dra                   bool
	xidWait, reconcileInterval, configPoll              time.Duration
	qps                                                 float64
	burst, workers, cliqueSize                          int
	nodeSelector                                        string
}

func newFlags(mode string, stderr io.Writer) *flags {
	f := &flags{fs: flag.NewFlagSet("tessera-device-plugin "+mode, flag.ContinueOnError)}
	fs := f.fs
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config)")
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME); the plugin patches only this node and its pods")
	fs.StringVar(&f.configPath, "config", "", "DevicePluginConfig file, applied live on change (default: timeslice, 4 slices per GPU)")
	fs.StringVar(&f.fakeGPUs, "fake-gpus", "", "use fake GPUs instead of NVML, e.g. 8xH100-80GB,nvlink=pairs,clique=c0 (see syntax above)")
	fs.StringVar(&f.nvmlLib, "nvml-lib", "", "path of libnvidia-ml.so.1 (default: the loader's search path)")
	fs.StringVar(&f.pluginDir, "device-plugin-dir", pluginapi.DevicePluginPath, "kubelet device-plugin directory (kubelet.sock lives here)")
	fs.StringVar(&f.podResourcesSocket, "pod-resources-socket", "/var/lib/kubelet/pod-resources/kubelet.sock", "kubelet PodResources API socket")
	fs.StringVar(&f.metricsAddr, "metrics-address", ":9400", "address for /metrics and /healthz (empty disables)")
	fs.StringVar(&f.cdiKind, "cdi-kind", "", `CDI device kind, e.g. "nvidia.com/gpu": Allocate then returns CDI device names "<kind>=<uuid>" (empty disables CDI)`)
	fs.StringVar(&f.mpsPipeDir, "mps-pipe-dir", "/run/nvidia/mps", "host directory of the MPS control daemon's pipes (strategy mps)")
	fs.BoolVar(&f.labelClique, "label-clique", true, "also label the node nvidia.com/gpu.clique when its GPUs share a fabric clique")
	fs.BoolVar(&f.noKube, "no-kube", false, "run without the API server: no inventory, no assignments (best fit only), no reconciliation")
	fs.BoolVar(&f.dra, "dra", false, "DRA driver "+dra.DriverName+" instead of device plugin (docs/design.md, DRA): serve publishes ResourceSlices and prepares claims as CDI specs; simulate publishes the simulated nodes' ResourceSlices instead of slice capacity")
	fs.StringVar(&f.draPluginDir, "dra-plugin-dir", "/var/lib/kubelet/plugins/"+dra.DriverName, "DRA: the driver's socket directory")
	fs.StringVar(&f.draRegistrarDir, "dra-registrar-dir", "/var/lib/kubelet/plugins_registry", "DRA: the kubelet's plugin registration directory")
	fs.StringVar(&f.cdiDir, "cdi-dir", "/var/run/cdi", "DRA: where the container runtime reads CDI specs")
	fs.DurationVar(&f.reconcileInterval, "reconcile-interval", 10*time.Second, "PodResources reconciliation period")
	fs.DurationVar(&f.configPoll, "config-poll-interval", 5*time.Second, "config file and node label poll period")
	fs.Float64Var(&f.qps, "kube-api-qps", 20, "API client QPS")
	fs.IntVar(&f.burst, "kube-api-burst", 40, "API client burst")
	switch mode {
	case "discover":
		fs.BoolVar(&f.jsonOut, "json", false, "print JSON")
		fs.DurationVar(&f.xidWait, "xid-wait", 2*time.Second, "how long to listen for Xid events after registering")
	case "simulate":
		fs.StringVar(&f.nodeSelector, "node-selector", "type=kwok", "label selector of the simulated nodes")
		fs.IntVar(&f.workers, "workers", 16, "parallel node patches")
		fs.IntVar(&f.cliqueSize, "clique-size", 0, "group simulated nodes into NVLink cliques of this size (by trailing node number)")
	}
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	klogFlags.VisitAll(func(kf *flag.Flag) {
		if fs.Lookup(kf.Name) == nil {
			fs.Var(kf.Value, kf.Name, kf.Usage)
		}
	})
	return f
}

// Main runs the command with args (without the program name) and returns the
// exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	mode := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		mode, args = args[0], args[1:]
	}
	switch mode {
	case "serve", "discover", "simulate":
	case "help":
		newFlags("serve", stderr).fs.Usage()
		return 0
	default:
		fmt.Fprintf(stderr, "unknown command %q (want serve, discover or simulate)\n", mode)
		return 2
	}
	f := newFlags(mode, stderr)
	if err := f.fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if f.fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected arguments: %v\n", f.fs.Args())
		return 2
	}
	var err error
	switch mode {
	case "serve":
		err = serve(ctx, f)
	case "discover":
		err = discover(ctx, f, stdout)
	case "simulate":
		err = runSimulate(ctx, f)
	}
	if err != nil {
		fmt.Fprintf(stderr, "tessera-device-plugin %s: %v\n", mode, err)
		return 1
	}
	return 0
}

func backend(f *flags) (nvml.Interface, *nvml.Fake, error) {
	if f.fakeGPUs != "" {
		spec, err := nvml.ParseFakeSpec(f.fakeGPUs)
		if err != nil {
			return nil, nil, err
		}
		seed := f.nodeName
		if seed == "" {
			seed = "fake"
		}
		fk := nvml.NewFake(spec, seed)
		return fk, fk, nil
	}
	b, err := nvml.NewReal(f.nvmlLib)
	if err != nil {
		return nil, nil, err
	}
	return b, nil, nil
}

func kubeClient(f *flags) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if f.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("API client config (use --kubeconfig, run in-cluster, or --no-kube): %w", err)
	}
	cfg.QPS, cfg.Burst = float32(f.qps), f.burst
	cfg.UserAgent = "tessera-device-plugin"
	return kubernetes.NewForConfig(cfg)
}

func serve(ctx context.Context, f *flags) error {
	logger := klog.FromContext(ctx)
	nv, fake, err := backend(f)
	if err != nil {
		return err
	}
	defer nv.Close()
	opts := deviceplugin.Options{
		NodeName:           f.nodeName,
		PluginDir:          f.pluginDir,
		ConfigPath:         f.configPath,
		ConfigPollInterval: f.configPoll,
		ReconcileInterval:  f.reconcileInterval,
		LabelClique:        f.labelClique,
		DRA:                f.dra,
		Env:                slicing.EnvOptions{CDIKind: f.cdiKind, MPSPipeDir: f.mpsPipeDir},
	}
	deps := deviceplugin.Deps{NVML: nv, Clock: clock.RealClock{}}
	if f.dra && f.noKube {
		return fmt.Errorf("--dra needs the API server (ResourceSlices, claims): drop --no-kube")
	}
	var client kubernetes.Interface
	if !f.noKube {
		if f.nodeName == "" {
			return fmt.Errorf("--node-name (or $NODE_NAME) is required unless --no-kube")
		}
		client, err = kubeClient(f)
		if err != nil {
			return err
		}
	}
	switch {
	case f.dra:
		// The kubelet hands the driver each claim's allocation: no
		// scheduler assignments to follow and no device-plugin
		// allocations to reconcile.
		node := deviceplugin.NewKubeNode(client, f.nodeName)
		node.Start(ctx)
		if !node.WaitForSync(ctx) {
			return fmt.Errorf("waiting for the node cache: %w", ctx.Err())
		}
		deps.Nodes = node
	case !f.noKube:
		pods := deviceplugin.NewPodCache(client, f.nodeName)
		node := deviceplugin.NewKubeNode(client, f.nodeName)
		pods.Start(ctx)
		node.Start(ctx)
		if !pods.WaitForSync(ctx) || !node.WaitForSync(ctx) {
			return fmt.Errorf("waiting for pod and node caches: %w", ctx.Err())
		}
		prc := &deviceplugin.PodResourcesClient{Socket: f.podResourcesSocket}
		defer prc.Close()
		deps.Pending, deps.Nodes, deps.PodResources = pods, node, prc
		deps.Pods = deviceplugin.NewKubePods(ctx, client, f.nodeName)
	}
	p, err := deviceplugin.New(ctx, opts, deps)
	if err != nil {
		return err
	}
	inv := p.Inventory()
	logger.Info("Starting", "node", f.nodeName, "gpus", len(inv.GPUs), "strategy", inv.Strategy, "slicesPerGPU", inv.SlicesPerGPU, "slices", inv.TotalSlices(), "fake", f.fakeGPUs != "")
	if f.metricsAddr != "" {
		stop, err := serveHTTP(ctx, f.metricsAddr, p, fake)
		if err != nil {
			return err
		}
		defer stop()
	}
	if f.dra {
		return p.RunWith(ctx, func(ctx context.Context) error {
			return dra.Run(ctx, p, dra.Options{
				NodeName: f.nodeName, Client: client, PluginDir: f.draPluginDir, RegistrarDir: f.draRegistrarDir,
				CDIDir: f.cdiDir, Env: opts.Env,
			})
		})
	}
	return p.Run(ctx)
}

// listenRetry listens on addr, retrying while the address is in use for up
// to wait: with hostNetwork a replacement pod starts while the killed one's
// process may still hold the port for a moment, and exiting then would put
// the new plugin into crash-loop backoff for nothing.
func listenRetry(ctx context.Context, addr string, wait time.Duration) (net.Listener, error) {
	deadline := time.Now().Add(wait)
	for {
		lis, err := net.Listen("tcp", addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return lis, err
		}
		klog.FromContext(ctx).Info("Metrics address in use; retrying", "address", addr)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func serveHTTP(ctx context.Context, addr string, p *deviceplugin.Plugin, fake *nvml.Fake) (func(), error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(p.Metrics().Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/inventory", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(p.Inventory())
	})
	if fake != nil {
		// Fake GPUs only: inject an Xid, e.g. POST /debug/fake/xid?gpu=<uuid>&xid=79.
		mux.HandleFunc("/debug/fake/xid", func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost {
				http.Error(w, "POST only", http.StatusMethodNotAllowed)
				return
			}
			xid, err := strconv.ParseUint(r.URL.Query().Get("xid"), 10, 64)
			if err != nil {
				http.Error(w, "xid: want an integer", http.StatusBadRequest)
				return
			}
			if !fake.InjectXid(r.URL.Query().Get("gpu"), xid) {
				http.Error(w, "event buffer full", http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(w, "injected\n")
		})
	}
	lis, err := listenRetry(ctx, addr, 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.FromContext(ctx).Error(err, "Metrics server stopped")
		}
	}()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}

// DiscoverReport is what discover prints.
type DiscoverReport struct {
	Backend       string            `json:"backend"`
	DriverVersion string            `json:"driverVersion,omitempty"`
	GPUs          []nvml.GPU        `json:"gpus"`
	Health        map[string]string `json:"health"`
	Xid           XidReport         `json:"xid"`
	Inventory     *api.Inventory    `json:"inventory"`
}

// XidReport says how Xid registration went.
type XidReport struct {
	Registered []string          `json:"registered"`
	Errors     map[string]string `json:"errors,omitempty"`
	Events     []string          `json:"events,omitempty"`
	WatchError string            `json:"watchError,omitempty"`
}

func discover(ctx context.Context, f *flags, stdout io.Writer) error {
	nv, _, err := backend(f)
	if err != nil {
		return err
	}
	defer nv.Close()
	rep := DiscoverReport{Backend: "nvml", Health: map[string]string{}, Xid: XidReport{Errors: map[string]string{}}}
	if f.fakeGPUs != "" {
		rep.Backend = "fake:" + f.fakeGPUs
	}
	if b, ok := nv.(*nvml.Backend); ok {
		rep.DriverVersion = b.DriverVersion()
	}
	rep.GPUs, err = nv.Discover(ctx)
	if err != nil {
		return err
	}
	for _, g := range rep.GPUs {
		rep.Health[g.UUID] = "ok"
		if err := nv.Check(ctx, g.UUID); err != nil {
			rep.Health[g.UUID] = err.Error()
		}
	}
	// Register for Xid events and listen briefly.
	wctx, cancel := context.WithTimeout(ctx, f.xidWait)
	failed := map[string]bool{}
	werr := nv.WatchXid(wctx, func(ev nvml.XidEvent) {
		if ev.Err != nil {
			failed[ev.UUID] = true
			rep.Xid.Errors[ev.UUID] = ev.Err.Error()
			return
		}
		rep.Xid.Events = append(rep.Xid.Events, fmt.Sprintf("gpu=%s xid=%d", ev.UUID, ev.Xid))
	})
	cancel()
	if werr != nil {
		rep.Xid.WatchError = werr.Error()
	} else {
		for _, g := range rep.GPUs {
			if !failed[g.UUID] {
				rep.Xid.Registered = append(rep.Xid.Registered, g.UUID)
			}
		}
	}
	cfg := config.Default()
	if f.configPath != "" {
		if cfg, _, err = config.Load(f.configPath); err != nil {
			return err
		}
	}
	layout, err := slicing.NewLayout(rep.GPUs, cfg.Resolve(nil).Sharing)
	if err != nil {
		return err
	}
	rep.Inventory = layout.Inventory(func(u string) bool { return rep.Health[u] == "ok" })
	if f.jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printReport(stdout, rep)
	return nil
}

func printReport(w io.Writer, rep DiscoverReport) {
	fmt.Fprintf(w, "backend: %s   driver: %s   GPUs: %d\n\n", rep.Backend, rep.DriverVersion, len(rep.GPUs))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IDX\tUUID\tPRODUCT\tMEMORY MiB\tPCI BUS\tNUMA\tMIG\tNVLINKS\tPEERS\tCLIQUE\tHEALTH")
	for _, g := range rep.GPUs {
		mig := "off"
		if g.MIGEnabled {
			mig = fmt.Sprintf("on (%d)", len(g.MIGDevices))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%d\t%s\t%d\t%d\t%s\t%s\n", g.Index, g.UUID, g.Product, g.MemoryMiB, g.PCIBusID, g.NUMA, mig, len(g.NVLinks), len(g.NVLinkPeers), dash(g.Clique), rep.Health[g.UUID])
	}
	_ = tw.Flush()
	for _, g := range rep.GPUs {
		for _, m := range g.MIGDevices {
			fmt.Fprintf(w, "  GPU %d MIG %d: %s %s %d MiB (GI %d)\n", g.Index, m.Index, m.UUID, m.Name, m.MemoryMiB, m.GPUInstanceID)
		}
		for _, n := range g.Notes {
			fmt.Fprintf(w, "  GPU %d note: %s\n", g.Index, n)
		}
	}
	fmt.Fprintf(w, "\nXid events: registered on %d GPUs", len(rep.Xid.Registered))
	if rep.Xid.WatchError != "" {
		fmt.Fprintf(w, "; watch error: %s", rep.Xid.WatchError)
	}
	fmt.Fprintln(w)
	keys := make([]string, 0, len(rep.Xid.Errors))
	for k := range rep.Xid.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %s: %s\n", k, rep.Xid.Errors[k])
	}
	for _, e := range rep.Xid.Events {
		fmt.Fprintf(w, "  event: %s\n", e)
	}
	fmt.Fprintf(w, "\nslicing (default config): %s, %d slices per GPU, %d slices\n", rep.Inventory.Strategy, rep.Inventory.SlicesPerGPU, rep.Inventory.TotalSlices())
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runSimulate(ctx context.Context, f *flags) error {
	if f.fakeGPUs == "" {
		return fmt.Errorf("--fake-gpus is required")
	}
	spec, err := nvml.ParseFakeSpec(f.fakeGPUs)
	if err != nil {
		return err
	}
	cfg := config.Default()
	if f.configPath != "" {
		if cfg, _, err = config.Load(f.configPath); err != nil {
			return err
		}
	}
	client, err := kubeClient(f)
	if err != nil {
		return err
	}
	return simulate.NewSimulator(client, simulate.SimOptions{
		Spec: spec, Config: cfg, NodeSelector: f.nodeSelector, CliqueSize: f.cliqueSize, LabelClique: f.labelClique, Workers: f.workers, DRA: f.dra,
	}).Run(ctx)
}
