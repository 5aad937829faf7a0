package viz

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// Options are the command line of kubectl-tessera.
type Options struct {
	ConfigFlags   *genericclioptions.ConfigFlags
	Streams       genericiooptions.IOStreams
	AllNamespaces bool
	Output        string
	SVG           string
	Color         string
	All           bool
	MaxNodes      int
	GroupBy       string
	Gangs         bool

	// clients, when set, replace the ones built from ConfigFlags (tests).
	clients *Clients
	// lookupEnv reads NO_COLOR; os.LookupEnv when nil.
	lookupEnv func(string) (string, bool)
}

// NewCommand returns the kubectl-tessera command tree. Run as
// `kubectl tessera ...` (kubectl finds kubectl-tessera on PATH) or
// standalone; either way it reads the current kubeconfig like kubectl.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	return newCommand(&Options{ConfigFlags: genericclioptions.NewConfigFlags(true), Streams: streams})
}

func newCommand(o *Options) *cobra.Command {
	use := "kubectl-tessera"
	if strings.HasPrefix(filepath.Base(os.Args[0]), "kubectl-") {
		use = "kubectl tessera"
	}
	root := &cobra.Command{
		Use:   use,
		Short: "See Tessera's GPU slices, gangs and placement decisions",
		Long: `kubectl tessera shows how Tessera shares GPUs: which slices of which GPU on which node
each pod and gang holds, which gangs wait and why, and why a pod is where it is.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	o.ConfigFlags.AddFlags(root.PersistentFlags())
	pf := root.PersistentFlags()
	pf.BoolVarP(&o.AllNamespaces, "all-namespaces", "A", false, "gangs and events of all namespaces")
	pf.StringVarP(&o.Output, "output", "o", "", "output format: json or yaml (default: human-readable)")
	pf.StringVar(&o.SVG, "svg", "", "also write an SVG picture of the node × GPU × slice map with gangs coloured to this file")
	pf.StringVar(&o.Color, "color", "auto", "colour: auto (when stdout is a terminal and NO_COLOR is unset), always or never")
	pf.BoolVar(&o.All, "all", false, "draw every node, even above --max-nodes")
	pf.IntVar(&o.MaxNodes, "max-nodes", DefaultMaxNodes, "above this many nodes, maps aggregate nodes per topology domain")
	pf.StringVar(&o.GroupBy, "group-by", "clique", "node label key (or clique, rack, zone) aggregated rows are grouped by")

	nodes := &cobra.Command{
		Use:   "nodes",
		Short: "Map of slices used, free and unhealthy per node and GPU",
		Example: `  kubectl tessera nodes
  kubectl tessera nodes --gangs --svg placement.svg
  kubectl tessera nodes --all -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.runNodes(cmd.Context()) },
	}
	nodes.Flags().BoolVar(&o.Gangs, "gangs", false, "list the gangs under the map")
	gangs := &cobra.Command{
		Use:     "gangs",
		Aliases: []string{"gang"},
		Short:   "Gangs: source, members placed/required, domain, time waiting, last scheduler reason",
		Long: `Gangs: source, members placed/required, domain, time waiting, last scheduler reason.

The PodGroup objects themselves: kubectl get pg (short for podgroups.scheduling.x-k8s.io).
On Kubernetes 1.37 with scheduling.k8s.io served, a bare "kubectl get podgroups" lists the
native scheduling.k8s.io PodGroups instead.`,
		Example: `  kubectl tessera gangs -A
  kubectl get pg -A`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.runGangs(cmd.Context()) },
	}
	explain := &cobra.Command{
		Use:   "explain POD",
		Short: "Why a pod is where it is, or why it is pending",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.runExplain(cmd.Context(), strings.TrimPrefix(strings.TrimPrefix(args[0], "pods/"), "pod/"))
		},
	}
	root.AddCommand(nodes, gangs, explain)
	return root
}

func (o *Options) validate() error {
	switch o.Output {
	case "", "json", "yaml":
	default:
		return fmt.Errorf("--output %q: want json or yaml", o.Output)
	}
	switch o.Color {
	case "auto", "always", "never":
	default:
		return fmt.Errorf("--color %q: want auto, always or never", o.Color)
	}
	return nil
}

func (o *Options) groupBy() string {
	switch o.GroupBy {
	case "clique", "":
		return "nvidia.com/gpu.clique"
	case "rack":
		return "topology.kubernetes.io/rack"
	case "zone":
		return "topology.kubernetes.io/zone"
	}
	return o.GroupBy
}

// useColor: colour only for a terminal and only when NO_COLOR is unset
// (https://no-color.org), unless --color says otherwise.
func (o *Options) useColor() bool {
	switch o.Color {
	case "always":
		return true
	case "never":
		return false
	}
	lookup := o.lookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if _, set := lookup("NO_COLOR"); set {
		return false
	}
	if t, _ := lookup("TERM"); t == "dumb" {
		return false
	}
	f, ok := o.Streams.Out.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (o *Options) clientsFor() (Clients, error) {
	if o.clients != nil {
		return *o.clients, nil
	}
	cfg, err := o.ConfigFlags.ToRESTConfig()
	if err != nil {
		return Clients{}, fmt.Errorf("loading kubeconfig: %w", err)
	}
	// A handful of List calls; the defaults (5 QPS) would only slow
	// discovery down.
	cfg.QPS, cfg.Burst = 50, 100
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return Clients{}, fmt.Errorf("creating client: %w", err)
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return Clients{}, fmt.Errorf("creating dynamic client: %w", err)
	}
	return Clients{Kube: kc, Dynamic: dc}, nil
}

// namespace is the namespace gangs and events are scoped to; "" means all.
func (o *Options) namespace() (string, error) {
	if o.AllNamespaces {
		return "", nil
	}
	ns, _, err := o.ConfigFlags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return "", fmt.Errorf("reading the namespace from the kubeconfig: %w", err)
	}
	return ns, nil
}

func (o *Options) snapshot(ctx context.Context, opts CollectOptions) (*Snapshot, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	c, err := o.clientsFor()
	if err != nil {
		return nil, err
	}
	in, err := Collect(ctx, c, opts)
	if err != nil {
		return nil, err
	}
	return Build(in), nil
}

func (o *Options) runNodes(ctx context.Context) error {
	// The map is cluster-wide, like kubectl get nodes: a GPU's slices are
	// used whatever namespace holds them, and its legend and gang table
	// cover every gang on it.
	s, err := o.snapshot(ctx, CollectOptions{Events: o.Gangs || o.Output != ""})
	if err != nil {
		return err
	}
	if err := o.writeSVG(s); err != nil {
		return err
	}
	if o.Output != "" {
		return o.print(s)
	}
	return RenderNodes(o.Streams.Out, s, NodesOptions{Color: o.useColor(), All: o.All, MaxNodes: o.MaxNodes,
		GroupBy: o.groupBy(), Gangs: o.Gangs, AllNamespaces: true})
}

func (o *Options) runGangs(ctx context.Context) error {
	ns, err := o.namespace()
	if err != nil {
		return err
	}
	s, err := o.snapshot(ctx, CollectOptions{Namespace: ns, Events: true})
	if err != nil {
		return err
	}
	if err := o.writeSVG(s); err != nil {
		return err
	}
	gs := s.FilterGangs(ns)
	if o.Output != "" {
		if gs == nil {
			gs = []Gang{}
		}
		return o.print(struct {
			Gangs    []Gang   `json:"gangs"`
			Warnings []string `json:"warnings,omitempty"`
		}{gs, s.Warnings})
	}
	if len(gs) == 0 && ns != "" {
		fmt.Fprintf(o.Streams.Out, "No gangs found in namespace %s.\n", ns)
		return nil
	}
	if err := RenderGangs(o.Streams.Out, s, gs, GangsOptions{AllNamespaces: ns == "", Color: o.useColor()}); err != nil {
		return err
	}
	for _, w := range s.Warnings {
		fmt.Fprintf(o.Streams.ErrOut, "warning: %s\n", w)
	}
	return nil
}

func (o *Options) runExplain(ctx context.Context, pod string) error {
	ns, _, err := o.ConfigFlags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return fmt.Errorf("reading the namespace from the kubeconfig: %w", err)
	}
	s, err := o.snapshot(ctx, CollectOptions{Namespace: ns, Events: true, Pod: pod})
	if err != nil {
		return err
	}
	e, err := s.Explain(ns, pod)
	if err != nil {
		return err
	}
	if o.Output != "" {
		return o.print(e)
	}
	return e.Render(o.Streams.Out, s.now)
}

func (o *Options) writeSVG(s *Snapshot) error {
	if o.SVG == "" {
		return nil
	}
	f, err := os.Create(o.SVG)
	if err != nil {
		return fmt.Errorf("creating %s: %w", o.SVG, err)
	}
	if err := RenderSVG(f, s, SVGOptions{All: o.All, MaxNodes: o.MaxNodes, GroupBy: o.groupBy()}); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", o.SVG, err)
	}
	fmt.Fprintf(o.Streams.ErrOut, "wrote %s\n", o.SVG)
	return nil
}

func (o *Options) print(v any) error {
	return WriteStructured(o.Streams.Out, o.Output, v)
}

// WriteStructured writes v as indented JSON or as YAML.
func WriteStructured(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding JSON: %w", err)
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return fmt.Errorf("encoding YAML: %w", err)
		}
	} else {
		b = append(b, '\n')
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("writing output: %w", err)
	}
	return nil
}
