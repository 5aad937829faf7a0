package viz

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tessera-gpu/tessera/gang"
)

func TestBuildGangs(t *testing.T) {
	s := Build(fixture16())
	type row struct {
		Source             gang.Source
		Letter             string
		Placed, Required   int
		Members            int
		State              string
		Domains            []string
		Slices             int
		Waiting, PlacedAft float64
		LastReason         string
	}
	got := map[string]row{}
	for _, g := range s.Gangs {
		got[g.Key()] = row{g.Source, g.Letter, g.Placed, g.Required, g.Members, g.State, g.Domains, g.Slices,
			g.WaitingSeconds, g.PlacedAfterSeconds, g.LastReason}
	}
	want := map[string]row{
		"ml/llama-70b":   {gang.SourcePodGroup, "A", 4, 4, 4, GangPlaced, []string{"c0"}, 16, 0, 2, "GangPlaced"},
		"ml/mixtral-0":   {gang.SourceLWS, "B", 2, 2, 2, GangPlaced, []string{"c1"}, 16, 0, 2, ""},
		"ml/pending-big": {gang.SourcePodGroup, "", 0, 8, 8, GangPending, nil, 0, 120, 0, "GangUnschedulable"},
		"ml/rejected":    {gang.SourcePodGroup, "", 0, 2, 2, GangPending, nil, 0, 180, 0, "GangRejected"},
		"ml/waiting":     {gang.SourcePodGroup, "", 0, 3, 2, GangPending, nil, 0, 40, 0, "WaitingForMembers"},
		"research/tp4":   {gang.SourceNative, "C", 4, 4, 4, GangPlaced, []string{"rack-1"}, 8, 0, 2, ""},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("gangs (-want +got):\n%s", diff)
	}
	wantSummary := Summary{Nodes: 16, GPUNodes: 15, GPUs: 120, Slices: 480, Used: 46, UsedByGangs: 40, Free: 430, Unhealthy: 4,
		FreeGPUs: 103, Gangs: 6, GangsPending: 3}
	if diff := cmp.Diff(wantSummary, s.Summary); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}
}

func TestBuildSlices(t *testing.T) {
	s := Build(fixture16())
	tests := map[string]struct {
		node   string
		gpu    int
		want   []Slice
		warned string
	}{
		"gang whole GPU": {node: "gpu-node-0", gpu: 0, want: []Slice{
			{SliceGang, "ml/llama-70b-0", "ml/llama-70b"}, {SliceGang, "ml/llama-70b-0", "ml/llama-70b"},
			{SliceGang, "ml/llama-70b-0", "ml/llama-70b"}, {SliceGang, "ml/llama-70b-0", "ml/llama-70b"}}},
		"two single pods share a GPU": {node: "gpu-node-0", gpu: 2, want: []Slice{
			{SlicePod, "default/notebook-1", ""}, {SlicePod, "default/notebook-2", ""}, {State: SliceFree}, {State: SliceFree}}},
		"allocation wins over assignment; second claim warned": {node: "gpu-node-2", gpu: 3, want: []Slice{
			{State: SliceFree}, {State: SliceFree}, {SlicePod, "default/notebook-3", ""}, {SlicePod, "default/notebook-3", ""}},
			warned: "claimed by default/notebook-3 and default/zz-conflict"},
		"unhealthy GPU":                 {node: "gpu-node-5", gpu: 7, want: []Slice{{State: SliceUnhealthy}, {State: SliceUnhealthy}, {State: SliceUnhealthy}, {State: SliceUnhealthy}}},
		"finished pod frees its slices": {node: "gpu-node-3", gpu: 0, want: []Slice{{State: SliceFree}, {State: SliceFree}, {State: SliceFree}, {State: SliceFree}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			n, ok := s.NodeByName(tc.node)
			if !ok {
				t.Fatalf("node %s missing", tc.node)
			}
			if diff := cmp.Diff(tc.want, n.GPUs[tc.gpu].Slices); diff != "" {
				t.Errorf("slices (-want +got):\n%s", diff)
			}
			if tc.warned != "" && !strings.Contains(strings.Join(n.Warnings, "\n"), tc.warned) {
				t.Errorf("warnings %q, want one containing %q", n.Warnings, tc.warned)
			}
		})
	}
	if n, _ := s.NodeByName("gpu-node-15"); n.InventoryError == "" || len(n.GPUs) != 0 {
		t.Errorf("gpu-node-15 has an unreadable inventory, got error %q and %d GPUs", n.InventoryError, len(n.GPUs))
	}
	if _, ok := s.NodeByName("cpu-node-0"); ok {
		t.Error("cpu-node-0 has no inventory and must not be on the map")
	}
}

func render(t *testing.T, f func(w io.Writer) error) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := f(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestGoldenTerminal(t *testing.T) {
	s16 := Build(fixture16())
	s1000 := Build(fixture1000())
	tests := map[string]func(w io.Writer) error{
		"nodes16.golden": func(w io.Writer) error {
			return RenderNodes(w, s16, NodesOptions{Gangs: true, AllNamespaces: true})
		},
		"nodes16-color.golden": func(w io.Writer) error {
			return RenderNodes(w, s16, NodesOptions{Color: true})
		},
		"nodes1000.golden": func(w io.Writer) error {
			return RenderNodes(w, s1000, NodesOptions{})
		},
		"nodes1000-rack.golden": func(w io.Writer) error {
			return RenderNodes(w, s1000, NodesOptions{GroupBy: "topology.kubernetes.io/rack"})
		},
		"gangs16.golden": func(w io.Writer) error {
			return RenderGangs(w, s16, s16.Gangs, GangsOptions{AllNamespaces: true})
		},
		"gangs16-ml.golden": func(w io.Writer) error {
			return RenderGangs(w, s16, s16.FilterGangs("ml"), GangsOptions{})
		},
		"explain-gang-member.golden":  explainTo(s16, "ml", "llama-70b-2"),
		"explain-mismatch.golden":     explainTo(s16, "default", "notebook-3"),
		"explain-pending-gang.golden": explainTo(s16, "ml", "pending-big-0"),
		"explain-pending-pod.golden":  explainTo(s16, "default", "pending-1"),
		"explain-lws.golden":          explainTo(s16, "ml", "mixtral-0-1"),
		"gangs16.json.golden": func(w io.Writer) error {
			return WriteStructured(w, "json", s16.FilterGangs("research"))
		},
		"gangs16.yaml.golden": func(w io.Writer) error {
			return WriteStructured(w, "yaml", s16.FilterGangs("research"))
		},
	}
	for name, f := range tests {
		t.Run(name, func(t *testing.T) { golden(t, name, render(t, f)) })
	}
}

func explainTo(s *Snapshot, ns, name string) func(io.Writer) error {
	return func(w io.Writer) error {
		e, err := s.Explain(ns, name)
		if err != nil {
			return err
		}
		return e.Render(w, s.now)
	}
}

func TestExplainUnknownPod(t *testing.T) {
	if _, err := Build(fixture16()).Explain("ml", "nope"); err == nil || !strings.Contains(err.Error(), "ml/nope not found") {
		t.Fatalf("error = %v, want not found", err)
	}
}

// TestNodeLinesPlain checks the map's promise at a glance: one line per
// node, one character per slice, the gang's letter where it runs.
func TestNodeLinesPlain(t *testing.T) {
	out := string(render(t, func(w io.Writer) error { return RenderNodes(w, Build(fixture16()), NodesOptions{}) }))
	tests := map[string]struct{ node, want string }{
		"gang and shared GPU": {"gpu-node-0 ", "AAAA AAAA ▒▒·· ···· ···· ···· ···· ····"},
		"unhealthy":           {"gpu-node-5 ", "BBBB BBBB ···· ···· ···· ···· ···· ✗✗✗✗"},
		"native gang":         {"gpu-node-8 ", "CC·· CC·· CC·· CC·· ···· ···· ···· ····"},
		"not ready":           {"gpu-node-14* ", "···· ···· ···· ···· ···· ···· ···· ····"},
		"unreadable":          {"gpu-node-15 ", "inventory unreadable"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, tc.node) {
					if !strings.Contains(line, tc.want) {
						t.Errorf("line %q lacks %q", line, tc.want)
					}
					return
				}
			}
			t.Errorf("no line for %s in\n%s", tc.node, out)
		})
	}
	if strings.Contains(out, "\x1b[") {
		t.Error("plain output carries ANSI escapes")
	}
}

func TestGoldenSVG(t *testing.T) {
	tests := map[string]struct {
		in   *Input
		opts SVGOptions
	}{
		"map16.svg.golden":            {in: fixture16()},
		"map1000.svg.golden":          {in: fixture1000()},
		"map16-aggregated.svg.golden": {in: fixture16(), opts: SVGOptions{MaxNodes: 4}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := Build(tc.in)
			out := render(t, func(w io.Writer) error { return RenderSVG(w, s, tc.opts) })
			text := svgCharData(t, out)
			for _, g := range s.Gangs {
				if g.Letter != "" && !strings.Contains(text, g.Key()) {
					t.Errorf("SVG text does not name gang %s", g.Key())
				}
			}
			golden(t, name, out)
		})
	}
}

// svgCharData parses the SVG as XML (failing on any syntax error) and returns
// its character data.
func svgCharData(t *testing.T, b []byte) string {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	var text strings.Builder
	root := ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not valid XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
		case xml.CharData:
			text.Write(tok)
			text.WriteString("\n")
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	return text.String()
}

func TestNaturalLess(t *testing.T) {
	tests := map[string]struct {
		a, b string
		want bool
	}{
		"numbers by value": {"node-2", "node-10", true},
		"reverse":          {"node-10", "node-2", false},
		"letters":          {"a", "b", true},
		"prefix":           {"node", "node-1", true},
		"equal":            {"c1", "c1", false},
		"leading zeros":    {"n-02", "n-10", true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := naturalLess(tc.a, tc.b); got != tc.want {
				t.Errorf("naturalLess(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
			}
		})
	}
}

func TestVisibleLen(t *testing.T) {
	m := &marker{color: true, letter: map[string]string{"ns/g": "A"}, index: map[string]int{"ns/g": 0}}
	if got := visibleLen(m.gpu(GPU{Slices: []Slice{{State: SliceGang, Gang: "ns/g"}, {State: SliceFree}, {State: SliceUnhealthy}}})); got != 3 {
		t.Errorf("visibleLen = %d, want 3", got)
	}
}

// TestThousandNodes builds and draws a 1000-node cluster, every node shown,
// in both views. How fast that is is BenchmarkBuildAndDraw1000's business.
func TestThousandNodes(t *testing.T) {
	s := Build(fixture1000())
	if len(s.Nodes) != 1000 {
		t.Fatalf("snapshot has %d nodes, want 1000", len(s.Nodes))
	}
	var text, svg bytes.Buffer
	if err := RenderNodes(&text, s, NodesOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	if err := RenderSVG(&svg, s, SVGOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	for _, out := range []struct {
		view string
		b    *bytes.Buffer
	}{{"nodes", &text}, {"svg", &svg}} {
		for _, node := range []string{"gpu-0000", "gpu-0999"} {
			if !strings.Contains(out.b.String(), node) {
				t.Errorf("%s view with All does not show node %s", out.view, node)
			}
		}
	}
}

// BenchmarkBuildAndDraw1000 measures the "fast on 1000 nodes" promise for the
// part that runs here (the API side is one List per resource): build the
// snapshot of 1000 nodes and draw every node in the nodes view and the SVG,
// as TestThousandNodes does.
//
// Target: < 2 s per op (one build plus both drawings).
func BenchmarkBuildAndDraw1000(b *testing.B) {
	in := fixture1000()
	for b.Loop() {
		s := Build(in)
		if err := RenderNodes(io.Discard, s, NodesOptions{All: true}); err != nil {
			b.Fatal(err)
		}
		if err := RenderSVG(io.Discard, s, SVGOptions{All: true}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildAndRender1000: build and the default nodes view (not every
// node) of the same 1000-node cluster.
func BenchmarkBuildAndRender1000(b *testing.B) {
	in := fixture1000()
	for b.Loop() {
		s := Build(in)
		_ = RenderNodes(io.Discard, s, NodesOptions{})
	}
}
