package viz

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
)

// Input is everything the views are computed from: one List per resource.
type Input struct {
	Nodes  []corev1.Node
	Pods   []corev1.Pod
	Groups []Group
	Events []corev1.Event
	// Now is the reference time for ages and waits; fixed in tests.
	Now time.Time
	// Warnings are problems met while collecting (an API not served, a
	// list forbidden) that make the picture less complete but not wrong.
	Warnings []string
}

// Group is a gang object of either PodGroup API, reduced to what the views
// show.
type Group struct {
	Namespace string
	Name      string
	// Source is gang.SourcePodGroup or gang.SourceNative.
	Source    gang.Source
	MinMember int
	// Required and Preferred are topology label keys (the tessera.dev
	// annotations, or the native PodGroup's topology constraint).
	Required  string
	Preferred string
	Created   time.Time
	// Phase is the scheduling.x-k8s.io PodGroup's status.phase, if any.
	Phase string
	// NotGang marks a native PodGroup with the basic policy: its pods are
	// scheduled one by one, so it is not shown as a gang.
	NotGang bool
}

// SliceState says who, if anyone, holds a slice.
type SliceState string

const (
	SliceFree      SliceState = "free"
	SliceGang      SliceState = "gang"
	SlicePod       SliceState = "pod"
	SliceUnhealthy SliceState = "unhealthy"
)

// Snapshot is the cluster as the views show it.
type Snapshot struct {
	Summary  Summary  `json:"summary"`
	Nodes    []Node   `json:"nodes"`
	Gangs    []Gang   `json:"gangs"`
	Warnings []string `json:"warnings,omitempty"`

	now    time.Time
	pods   map[string]*corev1.Pod // namespace/name
	events []corev1.Event
	gangOf map[string]string // pod key → gang key
	// eventsOf indexes events by "Kind/namespace/name" of their object.
	eventsOf map[string][]int
	gangIx   map[string]int // gang key → index in Gangs
	nodeIx   map[string]int // node name → index in Nodes
}

// Summary totals the map.
type Summary struct {
	Nodes int `json:"nodes"`
	// GPUNodes counts nodes with a readable inventory.
	GPUNodes    int `json:"gpuNodes"`
	GPUs        int `json:"gpus"`
	Slices      int `json:"slices"`
	Used        int `json:"used"`
	UsedByGangs int `json:"usedByGangs"`
	Free        int `json:"free"`
	Unhealthy   int `json:"unhealthy"`
	// FreeGPUs counts healthy GPUs with every slice free: what a
	// tensor-parallel rank of a whole GPU needs.
	FreeGPUs     int `json:"freeGPUs"`
	Gangs        int `json:"gangs"`
	GangsPending int `json:"gangsPending"`
}

// Node is one node's GPUs and slices.
type Node struct {
	Name         string `json:"name"`
	Clique       string `json:"clique,omitempty"`
	Rack         string `json:"rack,omitempty"`
	Zone         string `json:"zone,omitempty"`
	Ready        bool   `json:"ready"`
	Strategy     string `json:"strategy,omitempty"`
	SlicesPerGPU int    `json:"slicesPerGPU,omitempty"`
	Product      string `json:"product,omitempty"`
	// InventoryError is set when the node carries an inventory this build
	// cannot read; such a node shows no GPUs.
	InventoryError string   `json:"inventoryError,omitempty"`
	Used           int      `json:"used"`
	Free           int      `json:"free"`
	Unhealthy      int      `json:"unhealthy"`
	FreeGPUs       int      `json:"freeGPUs"`
	GPUs           []GPU    `json:"gpus,omitempty"`
	Warnings       []string `json:"warnings,omitempty"`

	labels map[string]string
}

// GPU is one physical GPU and its slices in index order.
type GPU struct {
	Index     int     `json:"index"`
	UUID      string  `json:"uuid"`
	Product   string  `json:"product,omitempty"`
	MemoryMiB int64   `json:"memoryMiB,omitempty"`
	Healthy   bool    `json:"healthy"`
	Slices    []Slice `json:"slices"`
}

// Slice is one slice and its holder.
type Slice struct {
	State SliceState `json:"state"`
	// Pod is namespace/name of the holder, also on an unhealthy slice
	// that is still held.
	Pod  string `json:"pod,omitempty"`
	Gang string `json:"gang,omitempty"`
}

// Gang is one gang with its members' progress.
type Gang struct {
	Namespace string      `json:"namespace"`
	Name      string      `json:"name"`
	Source    gang.Source `json:"source"`
	// Letter is the gang's mark on the maps (A..Z, a..z, 0..9, then "#"),
	// given to gangs holding slices, in name order.
	Letter string `json:"letter,omitempty"`
	// Required is how many members must be placed together (minMember,
	// gang.minCount, the LWS size).
	Required int `json:"required"`
	// Members counts member pods that exist and have not finished.
	Members int `json:"members"`
	Placed  int `json:"placed"`
	// Finished counts members that succeeded or failed.
	Finished int    `json:"finished,omitempty"`
	State    string `json:"state"`
	// Level is the topology label key the gang is aligned on (required,
	// else preferred, else the NVLink clique); Domains the values of that
	// label over its placed members' nodes.
	Level   string   `json:"level"`
	Domains []string `json:"domains,omitempty"`
	Nodes   []string `json:"nodes,omitempty"`
	Slices  int      `json:"slices"`
	// Request is the slices per member (the largest, when they differ).
	Request int       `json:"request,omitempty"`
	Created time.Time `json:"created"`
	// WaitingSeconds is how long the gang has been pending, from its
	// oldest unplaced member (or its object when no member exists yet).
	WaitingSeconds float64 `json:"waitingSeconds,omitempty"`
	// PlacedAfterSeconds is how long placing took: oldest member created
	// to the last member scheduled (from the PodScheduled conditions).
	PlacedAfterSeconds float64 `json:"placedAfterSeconds,omitempty"`
	// LastReason and LastMessage are the scheduler's latest word on the
	// gang (GangNotReady, GangUnschedulable, GangRejected, InvalidGang,
	// GangPlaced, FailedScheduling, ...).
	LastReason  string    `json:"lastReason,omitempty"`
	LastMessage string    `json:"lastMessage,omitempty"`
	LastEvent   time.Time `json:"lastEvent,omitzero"`

	hasObject bool
	members   []string // pod keys, sorted
}

// Key is namespace/name.
func (g *Gang) Key() string { return g.Namespace + "/" + g.Name }

// Gang states.
const (
	GangPlaced  = "Placed"
	GangPending = "Pending"
	// GangPartial is a gang with some but not all required members bound:
	// normal for the moment between the barrier opening and the last bind,
	// a problem if it lasts.
	GangPartial = "Partial"
	// GangFinished is a gang whose members all finished.
	GangFinished = "Finished"
)

// gangEventReasons are the scheduler's gang-level event reasons; the
// framework's per-pod FailedScheduling is only a fallback, because member
// pods repeat it long after the gang-level reason that explains it.
var gangEventReasons = map[string]bool{
	"GangNotReady": true, "GangUnschedulable": true, "GangRejected": true, "InvalidGang": true, "GangPlaced": true,
}

// Build folds in into a Snapshot. It makes no API calls.
func Build(in *Input) *Snapshot {
	s := &Snapshot{now: in.Now, pods: map[string]*corev1.Pod{}, gangOf: map[string]string{},
		gangIx: map[string]int{}, nodeIx: map[string]int{}, events: in.Events,
		Warnings: append([]string(nil), in.Warnings...)}
	s.buildNodes(in.Nodes)
	s.eventsOf = make(map[string][]int, len(in.Events))
	for i := range in.Events {
		o := &in.Events[i].InvolvedObject
		k := o.Kind + "/" + o.Namespace + "/" + o.Name
		s.eventsOf[k] = append(s.eventsOf[k], i)
	}
	gangs := map[string]*Gang{}
	// Pods of a native PodGroup with the basic policy are scheduled one by
	// one, as the scheduler does: they are single pods here too.
	single := map[string]bool{}
	for _, g := range in.Groups {
		if g.NotGang {
			single[g.Namespace+"/"+g.Name] = true
			continue
		}
		gangs[g.Namespace+"/"+g.Name] = &Gang{Namespace: g.Namespace, Name: g.Name, Source: g.Source,
			Required: g.MinMember, Level: firstNonEmpty(g.Required, g.Preferred, api.LabelClique),
			Created: g.Created, hasObject: true}
	}
	// Pods in name order, so that a slice claimed twice goes to the same
	// pod on every run (and in golden files).
	pods := make([]*corev1.Pod, 0, len(in.Pods))
	for i := range in.Pods {
		pods = append(pods, &in.Pods[i])
	}
	sort.Slice(pods, func(i, j int) bool { return podKey(pods[i]) < podKey(pods[j]) })
	lwsSize := map[string]int{}
	for _, p := range pods {
		key := podKey(p)
		s.pods[key] = p
		ref, inGang := podspec.GangOf(p)
		if inGang && ref.Source == podspec.GangNative && single[ref.Key] {
			ref, inGang = podspec.GangRef{}, false
		}
		if inGang {
			g := gangs[ref.Key]
			if g == nil {
				// A PodGroup gang whose object is missing (not created yet,
				// or deleted) is still shown, so a gang stuck on
				// GangNotReady is visible; LWS gangs never have one.
				ns, name, _ := strings.Cut(ref.Key, "/")
				g = &Gang{Namespace: ns, Name: name, Source: gang.Source(ref.Source), Level: api.LabelClique}
				gangs[ref.Key] = g
			}
			if ref.Source == podspec.GangLWS {
				if ex := p.Annotations[api.AnnotationLWSExclTopo]; ex != "" {
					g.Level = ex
				}
				lwsSize[ref.Key] = max(lwsSize[ref.Key], podspec.LWSSize(p))
			}
			if podFinished(p) {
				g.Finished++
			} else {
				s.gangOf[key] = ref.Key
				g.members = append(g.members, key)
				g.Members++
				g.Request = max(g.Request, podspec.SliceRequest(p))
				if p.Spec.NodeName != "" {
					g.Placed++
				}
			}
			if !g.hasObject && (g.Created.IsZero() || p.CreationTimestamp.Time.Before(g.Created)) {
				g.Created = p.CreationTimestamp.Time
			}
		}
		s.place(p, key, ref.Key)
	}
	keys := make([]string, 0, len(gangs))
	for k, g := range gangs {
		if g.Source == gang.SourceLWS && g.Required == 0 {
			g.Required = lwsSize[k]
		}
		if g.Required == 0 {
			g.Required = g.Members
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	letters := 0
	for _, k := range keys {
		g := gangs[k]
		s.finishGang(g)
		if g.Slices > 0 {
			g.Letter = gangLetter(letters)
			letters++
		}
		s.gangIx[k] = len(s.Gangs)
		s.Gangs = append(s.Gangs, *g)
		s.Summary.Gangs++
		if g.State != GangPlaced && g.State != GangFinished {
			s.Summary.GangsPending++
		}
	}
	s.summarise()
	return s
}

func (s *Snapshot) buildNodes(nodes []corev1.Node) {
	sorted := make([]*corev1.Node, 0, len(nodes))
	for i := range nodes {
		sorted = append(sorted, &nodes[i])
	}
	sort.Slice(sorted, func(i, j int) bool { return naturalLess(sorted[i].Name, sorted[j].Name) })
	for _, n := range sorted {
		nd := Node{Name: n.Name, Clique: n.Labels[api.LabelClique], Rack: n.Labels[api.LabelRack],
			Zone: n.Labels[api.LabelZone], Ready: nodeReady(n), labels: n.Labels}
		raw, ok := n.Annotations[api.AnnotationInventory]
		if !ok {
			continue // not a Tessera GPU node
		}
		inv, err := api.ParseInventory(raw)
		if err != nil {
			nd.InventoryError = err.Error()
		} else {
			nd.Strategy, nd.SlicesPerGPU = string(inv.Strategy), inv.SlicesPerGPU
			gpus := append([]api.GPU(nil), inv.GPUs...)
			sort.Slice(gpus, func(i, j int) bool { return gpus[i].Index < gpus[j].Index })
			for _, g := range gpus {
				gv := GPU{Index: g.Index, UUID: g.UUID, Product: g.Product, MemoryMiB: g.MemoryMiB, Healthy: g.Healthy,
					Slices: make([]Slice, g.Slices)}
				for k := range gv.Slices {
					gv.Slices[k].State = SliceFree
					if !g.Healthy {
						gv.Slices[k].State = SliceUnhealthy
					}
				}
				nd.GPUs = append(nd.GPUs, gv)
				if nd.Product == "" {
					nd.Product = g.Product
				} else if nd.Product != g.Product {
					nd.Product = "mixed"
				}
			}
			if nd.Clique == "" && len(gpus) > 0 {
				nd.Clique = gpus[0].Clique
			}
		}
		s.nodeIx[nd.Name] = len(s.Nodes)
		s.Nodes = append(s.Nodes, nd)
	}
}

// place marks the slices p holds on its node.
func (s *Snapshot) place(p *corev1.Pod, key, gangKey string) {
	if p.Spec.NodeName == "" || podFinished(p) {
		return
	}
	// A malformed annotation is warned about, and what is still readable
	// (the assignment behind a malformed allocation) is placed, as the
	// scheduler's ledger does.
	ids, _, err := podspec.HeldSlices(p)
	if err != nil {
		if i, ok := s.nodeIx[p.Spec.NodeName]; ok {
			s.Nodes[i].Warnings = append(s.Nodes[i].Warnings, fmt.Sprintf("pod %s: %v", key, err))
		}
	}
	if len(ids) == 0 {
		return
	}
	i, ok := s.nodeIx[p.Spec.NodeName]
	if !ok {
		s.Warnings = append(s.Warnings, fmt.Sprintf("pod %s holds slices on node %s, which has no Tessera inventory", key, p.Spec.NodeName))
		return
	}
	n := &s.Nodes[i]
	state := SlicePod
	if gangKey != "" {
		state = SliceGang
	}
	for _, id := range ids {
		gi := -1
		for j := range n.GPUs {
			if n.GPUs[j].UUID == id.GPU {
				gi = j
				break
			}
		}
		if gi < 0 || id.Index >= len(n.GPUs[gi].Slices) {
			n.Warnings = append(n.Warnings, fmt.Sprintf("pod %s holds slice %s, which the node's inventory does not list", key, id))
			continue
		}
		sl := &n.GPUs[gi].Slices[id.Index]
		if sl.Pod != "" {
			n.Warnings = append(n.Warnings, fmt.Sprintf("slice %s is claimed by %s and %s", id, sl.Pod, key))
			continue
		}
		sl.Pod, sl.Gang = key, gangKey
		if sl.State != SliceUnhealthy {
			sl.State = state
		}
	}
}

func (s *Snapshot) finishGang(g *Gang) {
	sort.Strings(g.members)
	nodes := map[string]bool{}
	domains := map[string]bool{}
	var oldestPending, oldest, lastScheduled time.Time
	for _, k := range g.members {
		p := s.pods[k]
		c := p.CreationTimestamp.Time
		if oldest.IsZero() || c.Before(oldest) {
			oldest = c
		}
		if p.Spec.NodeName == "" {
			if oldestPending.IsZero() || c.Before(oldestPending) {
				oldestPending = c
			}
			continue
		}
		nodes[p.Spec.NodeName] = true
		if i, ok := s.nodeIx[p.Spec.NodeName]; ok {
			if v := s.Nodes[i].labels[g.Level]; v != "" {
				domains[v] = true
			}
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionTrue && c.LastTransitionTime.After(lastScheduled) {
				lastScheduled = c.LastTransitionTime.Time
			}
		}
		ids, _, _ := podspec.HeldSlices(p)
		g.Slices += len(ids)
	}
	g.Nodes = sortedKeys(nodes)
	g.Domains = sortedKeys(domains)
	switch {
	case g.Members == 0 && g.Finished > 0:
		g.State = GangFinished
	case g.Placed >= g.Required && g.Placed > 0:
		g.State = GangPlaced
		if !lastScheduled.IsZero() && !oldest.IsZero() && lastScheduled.After(oldest) {
			g.PlacedAfterSeconds = lastScheduled.Sub(oldest).Seconds()
		}
	case g.Placed > 0:
		g.State = GangPartial
	default:
		g.State = GangPending
	}
	if g.State == GangPending || g.State == GangPartial {
		since := oldestPending
		if since.IsZero() {
			since = g.Created
		}
		if !since.IsZero() && s.now.After(since) {
			g.WaitingSeconds = s.now.Sub(since).Truncate(time.Second).Seconds()
		}
	}
	// The scheduler's latest word: events on the gang's object or on any
	// member.
	// Events indexed by object once per snapshot: gangs × events would be
	// quadratic on a big, busy cluster.
	var fallback *corev1.Event
	consider := func(e *corev1.Event) {
		switch {
		case gangEventReasons[e.Reason]:
			if t := EventTime(e); t.After(g.LastEvent) || g.LastReason == "" {
				g.LastEvent, g.LastReason, g.LastMessage = t, e.Reason, strings.TrimSpace(e.Message)
			}
		case e.Reason == "FailedScheduling" && (fallback == nil || EventTime(e).After(EventTime(fallback))):
			fallback = e
		}
	}
	for _, i := range s.eventsOf["PodGroup/"+g.Key()] {
		consider(&s.events[i])
	}
	for _, k := range g.members {
		for _, i := range s.eventsOf["Pod/"+k] {
			consider(&s.events[i])
		}
	}
	if g.LastReason == "" && fallback != nil && g.State != GangPlaced {
		g.LastEvent, g.LastReason, g.LastMessage = EventTime(fallback), fallback.Reason, strings.TrimSpace(fallback.Message)
	}
	if g.State == GangPending && g.LastReason == "" {
		switch {
		case g.Members < g.Required:
			g.LastReason, g.LastMessage = "WaitingForMembers", fmt.Sprintf("%d of %d members exist", g.Members, g.Required)
		case !g.hasObject && g.Source != gang.SourceLWS:
			g.LastReason, g.LastMessage = "NoPodGroup", "no PodGroup object of this name is served"
		}
	}
}

func (s *Snapshot) summarise() {
	sm := &s.Summary
	sm.Nodes = len(s.Nodes)
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if n.InventoryError == "" {
			sm.GPUNodes++
		}
		for _, g := range n.GPUs {
			sm.GPUs++
			allFree := g.Healthy
			for _, sl := range g.Slices {
				sm.Slices++
				switch sl.State {
				case SliceFree:
					n.Free++
				case SliceUnhealthy:
					n.Unhealthy++
					allFree = false
				default:
					n.Used++
					allFree = false
					if sl.State == SliceGang {
						sm.UsedByGangs++
					}
				}
			}
			if allFree && len(g.Slices) > 0 {
				n.FreeGPUs++
			}
		}
		sm.Used += n.Used
		sm.Free += n.Free
		sm.Unhealthy += n.Unhealthy
		sm.FreeGPUs += n.FreeGPUs
	}
}

// GangByKey returns the gang namespace/name.
func (s *Snapshot) GangByKey(key string) (*Gang, bool) {
	i, ok := s.gangIx[key]
	if !ok {
		return nil, false
	}
	return &s.Gangs[i], true
}

// NodeByName returns the node.
func (s *Snapshot) NodeByName(name string) (*Node, bool) {
	i, ok := s.nodeIx[name]
	if !ok {
		return nil, false
	}
	return &s.Nodes[i], true
}

// FilterGangs keeps the gangs of namespace ns ("" keeps all).
func (s *Snapshot) FilterGangs(ns string) []Gang {
	if ns == "" {
		return s.Gangs
	}
	var out []Gang
	for _, g := range s.Gangs {
		if g.Namespace == ns {
			out = append(out, g)
		}
	}
	return out
}

// EventTime is the latest time an event (or its series) was observed,
// whichever API wrote it: events.k8s.io fills eventTime and series, the
// legacy recorder lastTimestamp.
func EventTime(e *corev1.Event) time.Time {
	t := e.LastTimestamp.Time
	if e.Series != nil && e.Series.LastObservedTime.After(t) {
		t = e.Series.LastObservedTime.Time
	}
	if e.EventTime.After(t) {
		t = e.EventTime.Time
	}
	if t.IsZero() {
		t = e.FirstTimestamp.Time
	}
	if t.IsZero() {
		t = e.CreationTimestamp.Time
	}
	return t
}

func podKey(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }

func podFinished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// gangLetter is the i-th gang mark: 62 letters and digits, then "#" for
// the rest (the legend still names them).
func gangLetter(i int) string {
	const marks = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	if i < len(marks) {
		return marks[i : i+1]
	}
	return "#"
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// shortLevel names a topology label key for humans.
func shortLevel(key string) string {
	switch key {
	case api.LabelClique:
		return "clique"
	case api.LabelRack:
		return "rack"
	case api.LabelZone:
		return "zone"
	case corev1.LabelHostname:
		return "node"
	}
	return key
}
