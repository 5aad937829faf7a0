package viz

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/tessera-gpu/tessera/api"
)

// SVGOptions tune RenderSVG.
type SVGOptions struct {
	// All draws every node even above MaxNodes.
	All bool
	// MaxNodes is the aggregation threshold; DefaultMaxNodes when 0.
	MaxNodes int
	// GroupBy is the node label key of aggregated rows (and of the bands
	// grouping node rows); nvidia.com/gpu.clique when empty.
	GroupBy string
}

// Colours. Gangs take the palette in letter order; it has no red
// (unhealthy) and no grey (single pods), so neither can be mistaken for a
// gang.
var svgPalette = []string{
	"#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2", "#9c755f", "#ff9da7",
	"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
}

const (
	svgFree      = "#f3f5f7"
	svgFreeLine  = "#c9d1d9"
	svgPod       = "#8d99a6"
	svgUnhealthy = "#d62728"
	svgText      = "#1f2328"
	svgMuted     = "#57606a"
	svgFont      = "DejaVu Sans, Helvetica, Arial, sans-serif"
)

// gangColor is gang i's fill: the palette, then hues spaced by the golden
// angle so any number of gangs stay distinguishable from their neighbours.
func gangColor(i int) string {
	if i < len(svgPalette) {
		return svgPalette[i]
	}
	h := math.Mod(float64(i)*137.508, 360)
	// Keep clear of red hues (unhealthy).
	if h < 20 || h > 340 {
		h = math.Mod(h+40, 360)
	}
	return hslHex(h, 0.55, 0.5)
}

func hslHex(h, s, l float64) string {
	c := (1 - math.Abs(2*l-1)) * s
	x := c * (1 - math.Abs(math.Mod(h/60, 2)-1))
	m := l - c/2
	var r, g, b float64
	switch {
	case h < 60:
		r, g, b = c, x, 0
	case h < 120:
		r, g, b = x, c, 0
	case h < 180:
		r, g, b = 0, c, x
	case h < 240:
		r, g, b = 0, x, c
	case h < 300:
		r, g, b = x, 0, c
	default:
		r, g, b = c, 0, x
	}
	return fmt.Sprintf("#%02x%02x%02x", int((r+m)*255+0.5), int((g+m)*255+0.5), int((b+m)*255+0.5))
}

// svgWriter accumulates the picture; the document is written at the end,
// when its size is known.
type svgWriter struct {
	b      bytes.Buffer
	m      *marker
	width  float64
	height float64
}

func (w *svgWriter) printf(format string, args ...any) { fmt.Fprintf(&w.b, format, args...) }

// textWidth estimates the width of s in the sans-serif font at size px:
// the picture is laid out without font metrics, so this errs wide.
func textWidth(s string, size float64) float64 {
	return float64(utf8.RuneCountInString(s)) * size * 0.62
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func (w *svgWriter) text(x, y float64, size float64, fill, anchor, weight, s string) {
	w.printf(`<text x="%.1f" y="%.1f" font-size="%.0f" fill="%s"`, x, y, size, fill)
	if anchor != "" {
		w.printf(` text-anchor="%s"`, anchor)
	}
	if weight != "" {
		w.printf(` font-weight="%s"`, weight)
	}
	w.printf(`>%s</text>`+"\n", esc(s))
}

func (w *svgWriter) fill(sl Slice) string {
	switch sl.State {
	case SliceGang:
		return gangColor(w.m.index[sl.Gang])
	case SlicePod:
		return svgPod
	case SliceUnhealthy:
		return svgUnhealthy
	}
	return svgFree
}

// RenderSVG writes a picture of the node × GPU × slice map with gangs
// coloured and lettered, and a legend naming every gang. Above MaxNodes
// nodes it draws one bar per topology domain instead, so 1000 nodes stay
// legible.
func RenderSVG(out io.Writer, s *Snapshot, opts SVGOptions) error {
	w := &svgWriter{m: newMarker(s, false)}
	groupBy := firstNonEmpty(opts.GroupBy, api.LabelClique)
	maxNodes := opts.MaxNodes
	if maxNodes <= 0 {
		maxNodes = DefaultMaxNodes
	}
	sm := s.Summary
	w.text(20, 28, 16, svgText, "", "bold", "Tessera GPU slices")
	summary := fmt.Sprintf("%d GPU nodes · %d GPUs · %d slices: %d used (%d by %d gangs), %d free, %d unhealthy · %d whole GPUs free",
		sm.GPUNodes, sm.GPUs, sm.Slices, sm.Used, sm.UsedByGangs, sm.Gangs, sm.Free, sm.Unhealthy, sm.FreeGPUs)
	w.text(20, 48, 12, svgMuted, "", "", summary)
	y := 70.0
	w.width = max(640, textWidth(summary, 12)+40)
	if len(s.Nodes) > maxNodes && !opts.All {
		y = w.domains(s, groupBy, y)
	} else {
		y = w.nodes(s, groupBy, y)
	}
	y = w.legend(s, y+16)
	w.height = y + 16

	ew := &errWriter{w: out}
	ew.printf(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	ew.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="%s">`+"\n",
		w.width, w.height, w.width, w.height, svgFont)
	ew.printf(`<rect width="100%%" height="100%%" fill="#ffffff"/>` + "\n")
	if ew.err == nil {
		if _, err := out.Write(w.b.Bytes()); err != nil {
			return fmt.Errorf("writing SVG: %w", err)
		}
	}
	ew.printf("</svg>\n")
	return ew.err
}

// Node rows: one per node, GPUs as outlined groups of slice cells.
const (
	cellW, cellH = 13.0, 16.0
	cellGap      = 1.0
	gpuGap       = 7.0
	rowH         = 22.0
)

func (w *svgWriter) nodes(s *Snapshot, groupBy string, y float64) float64 {
	labelW := 60.0
	domW := 0.0
	for _, n := range s.Nodes {
		name := n.Name
		if !n.Ready {
			name += " (NotReady)"
		}
		labelW = max(labelW, textWidth(name, 12)+16)
		if d := nodeDomain(&n, groupBy); d != "" {
			domW = max(domW, textWidth(d, 12)+16, textWidth(shortLevel(groupBy), 11)+16)
		}
	}
	x0 := 20 + labelW + domW
	// Column header: GPU indexes over the widest node.
	maxGPUs, maxSlices := 0, 0
	for _, n := range s.Nodes {
		maxGPUs = max(maxGPUs, len(n.GPUs))
		for _, g := range n.GPUs {
			maxSlices = max(maxSlices, len(g.Slices))
		}
	}
	gpuW := float64(maxSlices)*(cellW+cellGap) - cellGap
	w.text(20, y+10, 11, svgMuted, "", "bold", "node")
	if domW > 0 {
		w.text(20+labelW, y+10, 11, svgMuted, "", "bold", shortLevel(groupBy))
	}
	for i := range maxGPUs {
		w.text(x0+float64(i)*(gpuW+gpuGap)+gpuW/2, y+10, 11, svgMuted, "middle", "bold", fmt.Sprintf("GPU %d", i))
	}
	y += 18
	prevDom := "\x00"
	band := false
	for _, n := range s.Nodes {
		d := nodeDomain(&n, groupBy)
		if d != prevDom {
			band = !band
			prevDom = d
		}
		if band {
			w.printf(`<rect x="14" y="%.1f" width="%.1f" height="%.1f" fill="#f6f8fa"/>`+"\n", y, x0-14+float64(maxGPUs)*(gpuW+gpuGap), rowH)
		}
		name := n.Name
		if !n.Ready {
			name += " (NotReady)"
		}
		w.text(20, y+15, 12, svgText, "", "", name)
		if d != "" {
			w.text(20+labelW, y+15, 12, svgMuted, "", "", d)
		}
		if n.InventoryError != "" {
			w.text(x0, y+15, 12, svgUnhealthy, "", "", "inventory unreadable: "+truncate(n.InventoryError, 60))
			y += rowH
			continue
		}
		for gi, g := range n.GPUs {
			gx := x0 + float64(gi)*(gpuW+gpuGap)
			w.printf(`<g><title>%s</title>`+"\n", esc(fmt.Sprintf("%s GPU %d %s %s%s", n.Name, g.Index, g.UUID, g.Product, map[bool]string{true: "", false: " UNHEALTHY"}[g.Healthy])))
			for k, sl := range g.Slices {
				x := gx + float64(k)*(cellW+cellGap)
				stroke := ""
				if sl.State == SliceFree {
					stroke = ` stroke="` + svgFreeLine + `" stroke-width="0.8"`
				}
				w.printf(`<rect x="%.1f" y="%.1f" width="%.0f" height="%.0f" rx="2" fill="%s"%s><title>%s</title></rect>`+"\n",
					x, y+3, cellW, cellH, w.fill(sl), stroke, esc(sliceTitle(n.Name, g, k, sl)))
				switch sl.State {
				case SliceGang:
					w.printf(`<text x="%.1f" y="%.1f" font-size="10" font-weight="bold" fill="#ffffff" text-anchor="middle">%s</text>`+"\n",
						x+cellW/2, y+15, esc(w.m.letter[sl.Gang]))
				case SliceUnhealthy:
					w.printf(`<path d="M%.1f %.1fL%.1f %.1fM%.1f %.1fL%.1f %.1f" stroke="#ffffff" stroke-width="1.5"/>`+"\n",
						x+3, y+6, x+cellW-3, y+cellH, x+cellW-3, y+6, x+3, y+cellH)
				}
			}
			w.printf("</g>\n")
		}
		y += rowH
	}
	w.width = max(w.width, x0+float64(maxGPUs)*(gpuW+gpuGap)+20)
	return y
}

func sliceTitle(node string, g GPU, k int, sl Slice) string {
	who := "free"
	switch sl.State {
	case SliceGang:
		who = sl.Pod + " (gang " + sl.Gang + ")"
	case SlicePod:
		who = sl.Pod
	case SliceUnhealthy:
		who = "unhealthy"
		if sl.Pod != "" {
			who += ", held by " + sl.Pod
		}
	}
	return fmt.Sprintf("%s GPU %d slice %s::%d: %s", node, g.Index, g.UUID, k, who)
}

func nodeDomain(n *Node, groupBy string) string {
	d := n.labels[groupBy]
	if d == "" && groupBy == api.LabelClique {
		d = n.Clique
	}
	return d
}

// Aggregated rows: one bar per domain, each gang a coloured segment.
const aggBarW = 560.0

func (w *svgWriter) domains(s *Snapshot, groupBy string, y float64) float64 {
	rows := aggregate(s, groupBy)
	labelW := 80.0
	for _, r := range rows {
		labelW = max(labelW, textWidth(r.name, 12)+16)
	}
	x0 := 20 + labelW
	w.text(20, y+10, 11, svgMuted, "", "bold", shortLevel(groupBy))
	w.text(x0, y+10, 11, svgMuted, "", "bold", fmt.Sprintf("slices of the %s (%d nodes aggregated)", shortLevel(groupBy), len(s.Nodes)))
	y += 18
	for _, r := range rows {
		total := 0
		for _, n := range r.byGang {
			total += n
		}
		total += r.single + r.free + r.bad
		w.text(20, y+14, 12, svgText, "", "", r.name)
		x := x0
		seg := func(n int, fill, letter, title string) {
			if n == 0 || total == 0 {
				return
			}
			wd := aggBarW * float64(n) / float64(total)
			stroke := ""
			if fill == svgFree {
				stroke = ` stroke="` + svgFreeLine + `" stroke-width="0.6"`
			}
			w.printf(`<rect x="%.2f" y="%.1f" width="%.2f" height="14" fill="%s"%s><title>%s</title></rect>`+"\n",
				x, y+3, wd, fill, stroke, esc(title))
			// The gang's letter where its segment is wide enough to hold it.
			if letter != "" && wd >= 12 {
				w.printf(`<text x="%.1f" y="%.1f" font-size="10" font-weight="bold" fill="#ffffff" text-anchor="middle">%s</text>`+"\n",
					x+wd/2, y+14, esc(letter))
			}
			x += wd
		}
		for _, g := range w.m.gangsIn(r) {
			seg(r.byGang[g], gangColor(w.m.index[g]), w.m.letter[g], fmt.Sprintf("%s %s: gang %s, %d slices", shortLevel(groupBy), r.name, g, r.byGang[g]))
		}
		seg(r.single, svgPod, "", fmt.Sprintf("%s %s: single pods, %d slices", shortLevel(groupBy), r.name, r.single))
		seg(r.free, svgFree, "", fmt.Sprintf("%s %s: %d slices free", shortLevel(groupBy), r.name, r.free))
		seg(r.bad, svgUnhealthy, "", fmt.Sprintf("%s %s: %d slices unhealthy", shortLevel(groupBy), r.name, r.bad))
		pct := 0.0
		if total > 0 {
			pct = 100 * float64(r.used) / float64(total)
		}
		w.text(x0+aggBarW+10, y+14, 11, svgMuted, "", "", fmt.Sprintf("%d nodes · %d GPUs · %.0f%% used · %d GPUs free%s",
			r.nodes, r.gpus, pct, r.freeGP, map[bool]string{true: fmt.Sprintf(" · %d unhealthy", r.bad), false: ""}[r.bad > 0]))
		y += 20
	}
	w.width = max(w.width, x0+aggBarW+10+textWidth("18 nodes · 144 GPUs · 100% used · 144 GPUs free · 144 unhealthy", 11)+20)
	return y
}

// legend draws the slice states and every gang, in columns.
func (w *svgWriter) legend(s *Snapshot, y float64) float64 {
	x := 20.0
	for _, it := range []struct{ fill, label string }{{svgFree, "free"}, {svgPod, "single pod"}, {svgUnhealthy, "unhealthy"}} {
		stroke := ""
		if it.fill == svgFree {
			stroke = ` stroke="` + svgFreeLine + `"`
		}
		w.printf(`<rect x="%.1f" y="%.1f" width="12" height="12" rx="2" fill="%s"%s/>`+"\n", x, y, it.fill, stroke)
		w.text(x+17, y+10, 12, svgText, "", "", it.label)
		x += 110
	}
	y += 24
	var gangs []Gang
	for _, g := range s.Gangs {
		if g.Letter != "" {
			gangs = append(gangs, g)
		}
	}
	if len(gangs) == 0 {
		return y
	}
	w.text(20, y+10, 12, svgText, "", "bold", "Gangs")
	y += 18
	labels := make([]string, len(gangs))
	colW := 300.0
	for i, g := range gangs {
		labels[i] = fmt.Sprintf("%s  (%s, %d/%d placed, %d slices, %s)", g.Key(), g.Source, g.Placed, g.Required, g.Slices, domainText(&g))
		colW = max(colW, textWidth(labels[i], 12)+36)
	}
	const lineH = 18.0
	cols := max(1, int((w.width-20)/colW))
	perCol := (len(gangs) + cols - 1) / cols
	w.width = max(w.width, 20+colW*float64(min(cols, len(gangs))))
	for i, g := range gangs {
		cx := 20 + float64(i/perCol)*colW
		cy := y + float64(i%perCol)*lineH
		w.printf(`<rect x="%.1f" y="%.1f" width="14" height="14" rx="2" fill="%s"/>`+"\n", cx, cy, gangColor(w.m.index[g.Key()]))
		w.printf(`<text x="%.1f" y="%.1f" font-size="10" font-weight="bold" fill="#ffffff" text-anchor="middle">%s</text>`+"\n", cx+7, cy+11, esc(g.Letter))
		w.text(cx+20, cy+11, 12, svgText, "", "", labels[i])
	}
	return y + float64(perCol)*lineH
}
