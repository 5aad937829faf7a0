package viz

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/duration"

	"github.com/tessera-gpu/tessera/api"
)

// Map characters. All are one column wide in a monospace terminal, so the
// map lines up without counting display widths.
const (
	charPod       = "▒"
	charFree      = "·"
	charUnhealthy = "✗"
)

// DefaultMaxNodes is how many nodes RenderNodes draws one by one before it
// aggregates them into one row per topology domain.
const DefaultMaxNodes = 64

// NodesOptions tune RenderNodes.
type NodesOptions struct {
	// Color draws gangs as coloured letters; off, they are plain letters.
	Color bool
	// All draws every node even above MaxNodes.
	All bool
	// MaxNodes is the aggregation threshold; DefaultMaxNodes when 0.
	MaxNodes int
	// GroupBy is the node label key aggregated rows are grouped by;
	// nvidia.com/gpu.clique when empty.
	GroupBy string
	// Gangs appends the gang table under the map.
	Gangs bool
	// AllNamespaces shows the namespace column of the gang table.
	AllNamespaces bool
}

// palette256 are xterm-256 background colours for gangs: mid-dark, so the
// white letter on them stays readable, and none red (unhealthy is red) or
// grey (single pods are grey).
var palette256 = []int{32, 166, 28, 92, 94, 163, 100, 31, 57, 130, 125, 22, 54, 24, 136, 61}

const (
	ansiDim   = "\x1b[2m"
	ansiGrey  = "\x1b[38;5;245m"
	ansiRed   = "\x1b[1;31m"
	ansiBold  = "\x1b[1m"
	ansiReset = "\x1b[0m"
)

// marker draws slices for one snapshot: it knows each gang's letter and
// colour.
type marker struct {
	s      *Snapshot
	color  bool
	letter map[string]string // gang key → letter
	index  map[string]int    // gang key → colour index
}

func newMarker(s *Snapshot, color bool) *marker {
	m := &marker{s: s, color: color, letter: map[string]string{}, index: map[string]int{}}
	i := 0
	for _, g := range s.Gangs {
		if g.Letter != "" {
			m.letter[g.Key()] = g.Letter
			m.index[g.Key()] = i
			i++
		}
	}
	return m
}

func (m *marker) paint(code, text string) string {
	if !m.color {
		return text
	}
	return code + text + ansiReset
}

// parts returns a slice's character and, with colour, its ANSI code.
func (m *marker) parts(sl Slice) (code, ch string) {
	switch sl.State {
	case SliceGang:
		ch = m.letter[sl.Gang]
		code = "\x1b[1;97;48;5;" + strconv.Itoa(palette256[m.index[sl.Gang]%len(palette256)]) + "m"
	case SlicePod:
		code, ch = ansiGrey, charPod
	case SliceUnhealthy:
		code, ch = ansiRed, charUnhealthy
	default:
		code, ch = ansiDim, charFree
	}
	if !m.color {
		code = ""
	}
	return code, ch
}

func (m *marker) slice(sl Slice) string {
	code, ch := m.parts(sl)
	if code == "" {
		return ch
	}
	return code + ch + ansiReset
}

// gpu draws a GPU's slices; with colour, runs of one code share one
// escape sequence, which keeps a 1000-node --all map small.
func (m *marker) gpu(g GPU) string {
	var b strings.Builder
	open := ""
	for _, sl := range g.Slices {
		code, ch := m.parts(sl)
		if code != open {
			if open != "" {
				b.WriteString(ansiReset)
			}
			b.WriteString(code)
			open = code
		}
		b.WriteString(ch)
	}
	if open != "" {
		b.WriteString(ansiReset)
	}
	return b.String()
}

// RenderNodes writes the node × GPU × slice map: one line per node (or, for
// more than MaxNodes nodes, one per topology domain), a legend naming every
// gang, and with opts.Gangs the gang table.
func RenderNodes(w io.Writer, s *Snapshot, opts NodesOptions) error {
	ew := &errWriter{w: w}
	m := newMarker(s, opts.Color)
	sm := s.Summary
	ew.printf("%s\n", m.paint(ansiBold, fmt.Sprintf("Tessera: %d GPU nodes, %d GPUs, %d slices: %d used (%d by gangs), %d free, %d unhealthy; %d whole GPUs free",
		sm.GPUNodes, sm.GPUs, sm.Slices, sm.Used, sm.UsedByGangs, sm.Free, sm.Unhealthy, sm.FreeGPUs)))
	if len(s.Nodes) == 0 {
		ew.printf("No node carries a %s annotation: is the Tessera device plugin running?\n", api.AnnotationInventory)
		return ew.err
	}
	ew.printf("\n")
	maxNodes := opts.MaxNodes
	if maxNodes <= 0 {
		maxNodes = DefaultMaxNodes
	}
	if len(s.Nodes) > maxNodes && !opts.All {
		groupBy := firstNonEmpty(opts.GroupBy, api.LabelClique)
		renderDomains(ew, s, m, groupBy)
		ew.printf("(%d nodes aggregated by %s; --all draws every node)\n", len(s.Nodes), shortLevel(groupBy))
	} else {
		renderNodeRows(ew, s, m)
	}
	ew.printf("\n")
	renderLegend(ew, s, m)
	for _, w := range s.Warnings {
		ew.printf("warning: %s\n", w)
	}
	if opts.Gangs && len(s.Gangs) > 0 {
		ew.printf("\n")
		if err := RenderGangs(ew, s, s.Gangs, GangsOptions{AllNamespaces: opts.AllNamespaces, Color: opts.Color}); err != nil {
			return err
		}
	}
	return ew.err
}

func renderNodeRows(ew *errWriter, s *Snapshot, m *marker) {
	hasClique, hasRack, hasZone := false, false, false
	for _, n := range s.Nodes {
		hasClique = hasClique || n.Clique != ""
		hasRack = hasRack || n.Rack != ""
		hasZone = hasZone || n.Zone != ""
	}
	t := &table{}
	head := []string{"NODE"}
	if hasClique {
		head = append(head, "CLIQUE")
	}
	if hasRack {
		head = append(head, "RACK")
	}
	if hasZone {
		head = append(head, "ZONE")
	}
	head = append(head, "SHARING", "USED", "FREE", "BAD", "GPU SLICES")
	t.row(head...)
	notReady := false
	for _, n := range s.Nodes {
		name := n.Name
		if !n.Ready {
			name += "*"
			notReady = true
		}
		r := []string{name}
		if hasClique {
			r = append(r, dash(n.Clique))
		}
		if hasRack {
			r = append(r, dash(n.Rack))
		}
		if hasZone {
			r = append(r, dash(n.Zone))
		}
		var gpus string
		if n.InventoryError != "" {
			gpus = m.paint(ansiRed, "inventory unreadable: "+truncate(n.InventoryError, 80))
			r = append(r, "?", "-", "-", "-", gpus)
		} else {
			parts := make([]string, len(n.GPUs))
			for i, g := range n.GPUs {
				parts[i] = m.gpu(g)
			}
			gpus = strings.Join(parts, " ")
			r = append(r, dash(n.Strategy), strconv.Itoa(n.Used), strconv.Itoa(n.Free), strconv.Itoa(n.Unhealthy), gpus)
		}
		t.row(r...)
	}
	t.write(ew)
	for _, n := range s.Nodes {
		for _, w := range n.Warnings {
			ew.printf("warning: node %s: %s\n", n.Name, w)
		}
	}
	if notReady {
		ew.printf("* node not Ready\n")
	}
}

// domainRow sums the nodes of one topology domain.
type domainRow struct {
	name                                 string
	nodes, gpus, used, free, bad, freeGP int
	byGang                               map[string]int
	single                               int
}

func aggregate(s *Snapshot, groupBy string) []*domainRow {
	rows := map[string]*domainRow{}
	for _, n := range s.Nodes {
		d := n.labels[groupBy]
		if d == "" && groupBy == api.LabelClique {
			d = n.Clique // from the inventory
		}
		if d == "" {
			d = "(none)"
		}
		r := rows[d]
		if r == nil {
			r = &domainRow{name: d, byGang: map[string]int{}}
			rows[d] = r
		}
		r.nodes++
		r.gpus += len(n.GPUs)
		r.used += n.Used
		r.free += n.Free
		r.bad += n.Unhealthy
		r.freeGP += n.FreeGPUs
		for _, g := range n.GPUs {
			for _, sl := range g.Slices {
				switch {
				case sl.State == SliceGang:
					r.byGang[sl.Gang]++
				case sl.State == SlicePod:
					r.single++
				}
			}
		}
	}
	out := make([]*domainRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].name, out[j].name) })
	return out
}

// barWidth is the number of cells of an aggregated row's bar.
const barWidth = 40

func renderDomains(ew *errWriter, s *Snapshot, m *marker, groupBy string) {
	t := &table{}
	t.row(strings.ToUpper(shortLevel(groupBy)), "NODES", "GPUS", "USED", "FREE", "BAD", "FREE GPUS", "SLICES (bar of "+strconv.Itoa(barWidth)+")", "GANGS")
	for _, r := range aggregate(s, groupBy) {
		t.row(r.name, strconv.Itoa(r.nodes), strconv.Itoa(r.gpus), strconv.Itoa(r.used), strconv.Itoa(r.free),
			strconv.Itoa(r.bad), strconv.Itoa(r.freeGP), m.bar(r), m.gangList(r, 12))
	}
	t.write(ew)
}

// bar draws a domain's slices as barWidth cells, each category (a gang,
// single pods, free, unhealthy) proportional by largest remainder, and
// every non-empty category at least one cell so no gang disappears.
func (m *marker) bar(r *domainRow) string {
	type cat struct {
		n     int
		cells int
		draw  string
	}
	var cats []*cat
	for _, g := range m.gangsIn(r) {
		draw := m.slice(Slice{State: SliceGang, Gang: g})
		cats = append(cats, &cat{n: r.byGang[g], draw: draw})
	}
	cats = append(cats, &cat{n: r.single, draw: m.slice(Slice{State: SlicePod})},
		&cat{n: r.free, draw: m.slice(Slice{State: SliceFree})},
		&cat{n: r.bad, draw: m.slice(Slice{State: SliceUnhealthy})})
	total := 0
	for _, c := range cats {
		total += c.n
	}
	if total == 0 {
		return ""
	}
	width := min(barWidth, total)
	used := 0
	rem := make([]int, len(cats))
	for i, c := range cats {
		c.cells = c.n * width / total
		rem[i] = c.n * width % total
		used += c.cells
	}
	order := make([]int, len(cats))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return rem[order[a]] > rem[order[b]] })
	for _, i := range order {
		if used >= width {
			break
		}
		if cats[i].n > 0 {
			cats[i].cells++
			used++
		}
	}
	for _, c := range cats {
		if c.n > 0 && c.cells == 0 {
			big := cats[0]
			for _, o := range cats {
				if o.cells > big.cells {
					big = o
				}
			}
			if big.cells > 1 {
				big.cells--
				c.cells++
			}
		}
	}
	var b strings.Builder
	for _, c := range cats {
		for range c.cells {
			b.WriteString(c.draw)
		}
	}
	return b.String()
}

// gangsIn lists the domain's gangs in letter order.
func (m *marker) gangsIn(r *domainRow) []string {
	keys := make([]string, 0, len(r.byGang))
	for k := range r.byGang {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m.index[keys[i]] < m.index[keys[j]] })
	return keys
}

func (m *marker) gangList(r *domainRow, limit int) string {
	keys := m.gangsIn(r)
	var parts []string
	for i, k := range keys {
		if i == limit {
			parts = append(parts, fmt.Sprintf("+%d", len(keys)-limit))
			break
		}
		parts = append(parts, m.slice(Slice{State: SliceGang, Gang: k}))
	}
	return strings.Join(parts, " ")
}

func renderLegend(ew *errWriter, s *Snapshot, m *marker) {
	ew.printf("Legend: %s gang slice (letter below)  %s single pod  %s free  %s unhealthy\n",
		m.paint(ansiBold, "A-Z"), m.slice(Slice{State: SlicePod}), m.slice(Slice{State: SliceFree}), m.slice(Slice{State: SliceUnhealthy}))
	t := &table{indent: "  "}
	for _, g := range s.Gangs {
		if g.Letter == "" {
			continue
		}
		t.row(m.slice(Slice{State: SliceGang, Gang: g.Key()}), g.Key(), string(g.Source),
			fmt.Sprintf("%d/%d placed", g.Placed, g.Required), fmt.Sprintf("%d slices", g.Slices), domainText(&g))
	}
	t.write(ew)
}

// GangsOptions tune RenderGangs.
type GangsOptions struct {
	AllNamespaces bool
	Color         bool
}

// RenderGangs writes one row per gang: its source, members placed/required,
// domain, time waiting (or how long placing took) and, when it is not
// placed, the scheduler's last reason.
func RenderGangs(w io.Writer, s *Snapshot, gangs []Gang, opts GangsOptions) error {
	ew := &errWriter{w: w}
	if len(gangs) == 0 {
		ew.printf("No gangs found.\n")
		return ew.err
	}
	m := newMarker(s, opts.Color)
	t := &table{}
	head := []string{"MAP"}
	if opts.AllNamespaces {
		head = append(head, "NAMESPACE")
	}
	head = append(head, "NAME", "SOURCE", "PLACED", "STATE", "DOMAIN", "TIME", "LAST REASON")
	t.row(head...)
	for _, g := range gangs {
		mark := "-"
		if g.Letter != "" {
			mark = m.slice(Slice{State: SliceGang, Gang: g.Key()})
		}
		r := []string{mark}
		if opts.AllNamespaces {
			r = append(r, g.Namespace)
		}
		var when string
		switch g.State {
		case GangPending, GangPartial:
			when = "waiting " + humanSeconds(g.WaitingSeconds)
		case GangPlaced:
			when = "placed in " + humanSeconds(g.PlacedAfterSeconds)
		default:
			when = "-"
		}
		reason := "-"
		if g.State != GangPlaced && g.LastReason != "" {
			reason = g.LastReason
			if g.LastMessage != "" {
				reason += ": " + truncate(oneLine(g.LastMessage), 100)
			}
		}
		state := g.State
		switch state {
		case GangPending, GangPartial:
			state = m.paint("\x1b[33m", state)
		case GangPlaced:
			state = m.paint("\x1b[32m", state)
		}
		r = append(r, g.Name, string(g.Source), fmt.Sprintf("%d/%d", g.Placed, g.Required), state, domainText(&g), when, reason)
		t.row(r...)
	}
	t.write(ew)
	return ew.err
}

func domainText(g *Gang) string {
	switch len(g.Domains) {
	case 0:
		return "-"
	case 1:
		return shortLevel(g.Level) + " " + g.Domains[0]
	}
	return shortLevel(g.Level) + " " + strings.Join(g.Domains, ",") + " (split)"
}

func secondsDuration(sec float64) time.Duration { return time.Duration(sec * float64(time.Second)) }

// humanSeconds formats like kubectl's ages. Kubernetes timestamps mostly
// have second resolution, so anything under a second is "<1s".
func humanSeconds(sec float64) string {
	if sec < 1 {
		return "<1s"
	}
	return duration.HumanDuration(secondsDuration(sec))
}

// table aligns columns by rune count, which ANSI colour codes would break:
// cells may carry colour, and widths are measured without it.
type table struct {
	rows   [][]string
	indent string
}

func (t *table) row(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) write(ew *errWriter) {
	var widths []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], visibleLen(c))
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		b.WriteString(t.indent)
		for i, c := range r {
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-visibleLen(c)+2))
			}
		}
		ew.printf("%s\n", strings.TrimRight(b.String(), " "))
	}
}

// visibleLen counts runes outside ANSI escape sequences.
func visibleLen(s string) int {
	n := 0
	for i := 0; i < len(s); {
		if s[i] == 0x1b {
			j := strings.IndexByte(s[i:], 'm')
			if j < 0 {
				break
			}
			i += j + 1
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
		n++
	}
	return n
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// naturalLess orders strings with embedded numbers by value, so node-2
// comes before node-10.
func naturalLess(a, b string) bool {
	for a != "" && b != "" {
		ca, cb := a[0], b[0]
		if isDigit(ca) && isDigit(cb) {
			i, j := digits(a), digits(b)
			na, nb := strings.TrimLeft(a[:i], "0"), strings.TrimLeft(b[:j], "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[i:], b[j:]
			continue
		}
		if ca != cb {
			return ca < cb
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func digits(s string) int {
	i := 0
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return i
}

// errWriter keeps the first write error so renderers can print freely and
// check once.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	if err != nil {
		e.err = fmt.Errorf("writing output: %w", err)
	}
	return n, err
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err != nil {
		return
	}
	if _, err := fmt.Fprintf(e.w, format, args...); err != nil {
		e.err = fmt.Errorf("writing output: %w", err)
	}
}
