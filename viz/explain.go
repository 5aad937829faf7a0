package viz

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
)

// Explanation says why a pod is where it is, or why it is pending.
type Explanation struct {
	Pod           string `json:"pod"`
	Phase         string `json:"phase"`
	Node          string `json:"node,omitempty"`
	SchedulerName string `json:"schedulerName"`
	Request       int    `json:"slicesRequested"`
	// Verdict is the one-line answer.
	Verdict string `json:"verdict"`
	// Reasons are the supporting facts, most important first.
	Reasons []string `json:"reasons"`
	Gang    *Gang    `json:"gang,omitempty"`
	// Slices are the slice IDs the pod holds, from SlicesFrom.
	Slices     []string     `json:"slices,omitempty"`
	SlicesFrom string       `json:"slicesFrom,omitempty"`
	GPUs       []ExplainGPU `json:"gpus,omitempty"`
	Capacity   *Capacity    `json:"capacity,omitempty"`
	Events     []EventLine  `json:"events,omitempty"`
}

// ExplainGPU is one GPU the pod holds slices of.
type ExplainGPU struct {
	Index   int    `json:"index"`
	UUID    string `json:"uuid"`
	Product string `json:"product,omitempty"`
	// Slices are the pod's slice indexes on this GPU.
	Slices []int `json:"slices"`
	// SharedWith lists the other pods holding slices of this GPU.
	SharedWith []string `json:"sharedWith,omitempty"`
	Free       int      `json:"free"`
}

// Capacity is what the inventories and annotations say is free for a
// pending pod's request right now.
type Capacity struct {
	// NodesThatFit counts nodes that could take one pod of this request.
	NodesThatFit int `json:"nodesThatFit"`
	// MembersThatFit counts how many such pods fit cluster-wide, one
	// rank per GPU as the scheduler places gang members.
	MembersThatFit int `json:"membersThatFit"`
	// Level, BestDomain and BestDomainMembers: for a gang, the domain of
	// its topology level with room for the most members.
	Level             string `json:"level,omitempty"`
	BestDomain        string `json:"bestDomain,omitempty"`
	BestDomainMembers int    `json:"bestDomainMembers,omitempty"`
	Needed            int    `json:"needed"`
}

// EventLine is one event about the pod or its gang.
type EventLine struct {
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Reason  string    `json:"reason"`
	Object  string    `json:"object"`
	Message string    `json:"message"`
	Count   int32     `json:"count,omitempty"`
}

// maxExplainEvents bounds the event list of an explanation.
const maxExplainEvents = 12

// Explain builds the explanation of pod namespace/name.
func (s *Snapshot) Explain(namespace, name string) (*Explanation, error) {
	key := namespace + "/" + name
	p := s.pods[key]
	if p == nil {
		return nil, fmt.Errorf("pod %s not found", key)
	}
	e := &Explanation{Pod: key, Phase: string(p.Status.Phase), Node: p.Spec.NodeName,
		SchedulerName: p.Spec.SchedulerName, Request: podspec.SliceRequest(p)}
	if gk, ok := s.gangOf[key]; ok {
		g, _ := s.GangByKey(gk)
		e.Gang = g
	} else if ref, ok := podspec.GangOf(p); ok {
		e.Gang, _ = s.GangByKey(ref.Key)
	}
	e.Events = s.eventsFor(p, e.Gang)
	say := func(format string, args ...any) { e.Reasons = append(e.Reasons, fmt.Sprintf(format, args...)) }

	ids, from, slicesErr := podspec.HeldSlices(p)
	switch {
	case podFinished(p):
		e.Verdict = fmt.Sprintf("Finished (%s); any slices it held are free again.", p.Status.Phase)
	case e.Request == 0 && len(ids) == 0:
		e.Verdict = fmt.Sprintf("Asks for no %s: Tessera does not place it.", api.ResourceName)
		if p.Spec.NodeName != "" {
			say("Bound to node %s by %s.", p.Spec.NodeName, dash(p.Spec.SchedulerName))
		}
	case p.Spec.NodeName != "":
		s.explainBound(e, p, ids, string(from), say)
	default:
		s.explainPending(e, p, say)
	}
	if slicesErr != nil {
		say("Its slice annotation is unreadable: %v.", slicesErr)
	}
	if e.Request > 0 && p.Spec.SchedulerName != api.SchedulerName {
		say("It names scheduler %q, not %s: slices are then not chosen per GPU and no assignment is written.", p.Spec.SchedulerName, api.SchedulerName)
	}
	return e, nil
}

func (s *Snapshot) explainBound(e *Explanation, p *corev1.Pod, ids []api.SliceID, from string, say func(string, ...any)) {
	if preemptedByScheduler(p) {
		say("It is being preempted: %s", oneLine(disruptionMessage(p)))
	}
	n, hasNode := s.NodeByName(p.Spec.NodeName)
	where := p.Spec.NodeName
	if hasNode {
		var doms []string
		for _, d := range [][2]string{{"clique", n.Clique}, {"rack", n.Rack}, {"zone", n.Zone}} {
			if d[1] != "" {
				doms = append(doms, d[0]+" "+d[1])
			}
		}
		if len(doms) > 0 {
			where += " (" + strings.Join(doms, ", ") + ")"
		}
	}
	e.Verdict = fmt.Sprintf("%s on node %s.", phaseWord(p), where)
	if g := e.Gang; g != nil {
		say("It is a member of gang %s (%s): %d/%d members placed, %s. Tessera plans a whole gang at once, inside one %s domain when it can, and reserves every member's node and slices before the first is bound; this node is where that plan put this member.",
			g.Key(), g.Source, g.Placed, g.Required, domainText(g), shortLevel(g.Level))
		for _, ev := range e.Events {
			if ev.Reason == "GangPlaced" {
				say("The scheduler reported %s: %s.", ev.Reason, ev.Message)
				break
			}
		}
	} else if e.Request > 0 {
		say("It is a single pod: Tessera picked the node by best fit, filling partly used GPUs first and keeping whole GPUs and NVLink pairs free for tensor-parallel gangs.")
	}
	if hasNode && n.Strategy != "" {
		say("The node shares GPUs by %s (%d slices per GPU%s).", n.Strategy, n.SlicesPerGPU, strategyNote(n.Strategy))
	}
	if len(ids) == 0 {
		if e.Request > 0 {
			say("It asks for %d slices but carries neither %s nor %s: it was not placed by %s, or its node's device plugin has not reported yet.",
				e.Request, api.AnnotationSliceAssignment, api.AnnotationSlicesAllocated, api.SchedulerName)
		}
		return
	}
	for _, id := range ids {
		e.Slices = append(e.Slices, id.String())
	}
	e.SlicesFrom = from
	if from == api.AnnotationSlicesAllocated {
		say("It holds %d slices, as the device plugin confirmed from the kubelet (%s).", len(ids), from)
	} else {
		say("It holds %d slices as the scheduler assigned them (%s); the device plugin has not confirmed them yet (%s).", len(ids), from, api.AnnotationSlicesAllocated)
	}
	if assigned, ok, err := podspec.Assignment(p); from == api.AnnotationSlicesAllocated && ok && (err != nil || !sameSlices(assigned, ids)) {
		say("MISMATCH: the scheduler assigned %s but the kubelet handed %s; Tessera counts the kubelet's.",
			p.Annotations[api.AnnotationSliceAssignment], p.Annotations[api.AnnotationSlicesAllocated])
	}
	if !hasNode {
		say("Its node %s has no readable Tessera inventory.", p.Spec.NodeName)
		return
	}
	byGPU := map[string][]int{}
	for _, id := range ids {
		byGPU[id.GPU] = append(byGPU[id.GPU], id.Index)
	}
	key := podKey(p)
	for _, g := range n.GPUs {
		mine, ok := byGPU[g.UUID]
		if !ok {
			continue
		}
		sort.Ints(mine)
		eg := ExplainGPU{Index: g.Index, UUID: g.UUID, Product: g.Product, Slices: mine}
		others := map[string]bool{}
		for _, sl := range g.Slices {
			if sl.Pod != "" && sl.Pod != key {
				others[sl.Pod] = true
			}
			if sl.State == SliceFree {
				eg.Free++
			}
		}
		eg.SharedWith = sortedKeys(others)
		e.GPUs = append(e.GPUs, eg)
		if !g.Healthy {
			say("GPU %d (%s) is UNHEALTHY.", g.Index, g.UUID)
		}
	}
}

func (s *Snapshot) explainPending(e *Explanation, p *corev1.Pod, say func(string, ...any)) {
	e.Verdict = "Pending: not bound to a node yet."
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
			msg := oneLine(c.Message)
			if msg == "" {
				msg = c.Reason
			}
			e.Verdict = fmt.Sprintf("Pending (%s): %s", c.Reason, msg)
		}
	}
	if g := e.Gang; g != nil {
		say("It is a member of gang %s (%s): %d/%d members placed, %d exist; a gang is placed all at once or not at all.",
			g.Key(), g.Source, g.Placed, g.Required, g.Members)
		if g.Members < g.Required {
			say("The gang waits for members: only %d of the %d it needs exist.", g.Members, g.Required)
		}
		if !g.hasObject && g.Source != gang.SourceLWS {
			say("No %s PodGroup named %s is served: the scheduler cannot know the gang's size until it exists.", g.Source, g.Name)
		}
		if g.LastReason != "" {
			say("The scheduler's last word on the gang (%s ago): %s: %s", humanSeconds(s.now.Sub(g.LastEvent).Seconds()), g.LastReason, oneLine(g.LastMessage))
		}
	}
	s.explainPreemption(e, p, say)
	if e.Request == 0 {
		return
	}
	c := s.capacity(e.Request, e.Gang)
	e.Capacity = c
	switch {
	case c.MembersThatFit == 0:
		say("No node has room for %d slices right now (per GPU for up to one GPU's slices, whole free GPUs above that).", e.Request)
	case e.Gang == nil:
		say("%d nodes have room for %d slices right now, so it should be placed soon; if it stays pending, read the scheduler's events below.", c.NodesThatFit, e.Request)
	default:
		say("Free right now: %d members of %d slices fit cluster-wide; the best %s, %s, has room for %d of the %d needed.",
			c.MembersThatFit, e.Request, shortLevel(c.Level), dash(c.BestDomain), c.BestDomainMembers, c.Needed)
	}
	if s.Summary.Unhealthy > 0 {
		say("%d slices are on unhealthy GPUs and cannot be used.", s.Summary.Unhealthy)
	}
}

// capacity counts room for pods of request slices with the scheduler's fit
// rule (podspec.RanksThatFit): one rank per GPU for requests up to one
// GPU's slices, request/slicesPerGPU wholly free full-size GPUs above that. The scheduler may have
// reserved some free slices for a planned gang; the API does not show
// that, so this is an upper bound.
func (s *Snapshot) capacity(request int, g *Gang) *Capacity {
	c := &Capacity{Needed: 1}
	if g != nil {
		c.Level, c.Needed = g.Level, max(g.Required-g.Placed, 1)
	}
	perDomain := map[string]int{}
	for _, n := range s.Nodes {
		if n.InventoryError != "" || n.SlicesPerGPU == 0 || !n.Ready {
			continue
		}
		gpus := make([]podspec.GPUFree, len(n.GPUs))
		for i, gp := range n.GPUs {
			gpus[i] = podspec.GPUFree{Slices: len(gp.Slices), Healthy: gp.Healthy}
			for _, sl := range gp.Slices {
				if sl.State == SliceFree {
					gpus[i].Free++
				}
			}
		}
		fits := podspec.RanksThatFit(request, n.SlicesPerGPU, gpus)
		if fits == 0 {
			continue
		}
		c.NodesThatFit++
		c.MembersThatFit += fits
		if g != nil {
			d := n.labels[g.Level]
			if d == "" && g.Level == api.LabelClique {
				d = n.Clique
			}
			if d != "" {
				perDomain[d] += fits
			}
		}
	}
	for _, d := range sortedKeys(boolKeys(perDomain)) {
		if perDomain[d] > c.BestDomainMembers {
			c.BestDomain, c.BestDomainMembers = d, perDomain[d]
		}
	}
	return c
}

// eventsFor lists the newest events about the pod and its gang's object,
// newest first.
func (s *Snapshot) eventsFor(p *corev1.Pod, g *Gang) []EventLine {
	var out []EventLine
	seen := map[string]int{}
	seenUID := map[string]bool{}
	for i := range s.events {
		ev := &s.events[i]
		o := ev.InvolvedObject
		if o.Namespace != p.Namespace {
			continue
		}
		mine := o.Kind == "Pod" && o.Name == p.Name && (o.UID == "" || o.UID == p.UID)
		ofGang := g != nil && o.Kind == "PodGroup" && o.Name == g.Name
		if !mine && !ofGang {
			continue
		}
		// The same event can arrive from two lists (skip it by UID), and
		// the events API starts new objects for what the old recorder
		// counted in one: one line per object, reason and message, with
		// the newest time and the summed count.
		if ev.UID != "" {
			if seenUID[string(ev.UID)] {
				continue
			}
			seenUID[string(ev.UID)] = true
		}
		count := max(ev.Count, 1)
		if ev.Series != nil && ev.Series.Count > count {
			count = ev.Series.Count
		}
		line := EventLine{Time: EventTime(ev), Type: ev.Type, Reason: ev.Reason,
			Object: strings.ToLower(o.Kind) + "/" + o.Name, Message: oneLine(ev.Message), Count: count}
		id := line.Object + "\x00" + line.Reason + "\x00" + line.Message
		if i, ok := seen[id]; ok {
			out[i].Count += line.Count
			if line.Time.After(out[i].Time) {
				out[i].Time = line.Time
			}
			continue
		}
		seen[id] = len(out)
		out = append(out, line)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.After(out[j].Time) })
	if len(out) > maxExplainEvents {
		out = out[:maxExplainEvents]
	}
	return out
}

// Render writes the explanation for a person.
func (e *Explanation) Render(w io.Writer, now time.Time) error {
	ew := &errWriter{w: w}
	ew.printf("Pod %s: %s\n", e.Pod, e.Verdict)
	for _, r := range e.Reasons {
		ew.printf("  - %s\n", r)
	}
	if len(e.GPUs) > 0 {
		ew.printf("GPUs:\n")
		t := &table{indent: "  "}
		t.row("GPU", "UUID", "PRODUCT", "SLICES", "FREE", "SHARED WITH")
		for _, g := range e.GPUs {
			sl := make([]string, len(g.Slices))
			for i, k := range g.Slices {
				sl[i] = strconv.Itoa(k)
			}
			t.row(strconv.Itoa(g.Index), g.UUID, dash(g.Product), strings.Join(sl, ","), strconv.Itoa(g.Free), dash(strings.Join(g.SharedWith, ", ")))
		}
		t.write(ew)
	}
	if len(e.Events) > 0 {
		ew.printf("Events (newest first):\n")
		t := &table{indent: "  "}
		t.row("AGE", "TYPE", "REASON", "OBJECT", "MESSAGE")
		for _, ev := range e.Events {
			age := "-"
			if !ev.Time.IsZero() {
				age = humanSeconds(now.Sub(ev.Time).Seconds())
			}
			reason := ev.Reason
			if ev.Count > 1 {
				reason += fmt.Sprintf(" (x%d)", ev.Count)
			}
			t.row(age, ev.Type, reason, ev.Object, truncate(ev.Message, 160))
		}
		t.write(ew)
	}
	return ew.err
}

func phaseWord(p *corev1.Pod) string {
	if p.Status.Phase == "" {
		return "Bound"
	}
	return string(p.Status.Phase)
}

func strategyNote(s string) string {
	switch api.SharingStrategy(s) {
	case api.StrategyTimeSlice:
		return "; time slicing: no memory or compute isolation between pods of one GPU"
	case api.StrategyMPS:
		return "; MPS: memory and thread-percentage limits per pod"
	case api.StrategyMIG:
		return "; MIG: each slice is a hardware-isolated MIG device"
	}
	return ""
}

func sameSlices(x, y []api.SliceID) bool {
	if len(x) != len(y) {
		return false
	}
	set := map[api.SliceID]bool{}
	for _, id := range x {
		set[id] = true
	}
	for _, id := range y {
		if !set[id] {
			return false
		}
	}
	return true
}

func boolKeys(m map[string]int) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

// explainPreemption says whether the scheduler preempted pods for this
// pending pod (its newest Preempting event, for the pod or its gang; the
// node it was nominated to) and how many of the pods it preempted are still
// terminating: the pod is placed once they are gone.
func (s *Snapshot) explainPreemption(e *Explanation, p *corev1.Pod, say func(string, ...any)) {
	var newest *EventLine
	for i := range e.Events {
		ev := &e.Events[i]
		if ev.Reason == "Preempting" && (newest == nil || ev.Time.After(newest.Time)) {
			newest = ev
		}
	}
	if newest == nil && p.Status.NominatedNodeName == "" {
		return
	}
	if newest != nil {
		say("The scheduler preempted lower-priority pods for it (%s ago): %s.", humanSeconds(s.now.Sub(newest.Time).Seconds()), oneLine(newest.Message))
	}
	if n := p.Status.NominatedNodeName; n != "" {
		say("It is nominated to node %s: the room there is kept for it while the preempted pods leave.", n)
	}
	leaving := 0
	for _, q := range s.pods {
		if q.DeletionTimestamp != nil && preemptedByScheduler(q) {
			leaving++
		}
	}
	if leaving > 0 {
		say("%d preempted pods are still terminating; it is placed once their slices are free.", leaving)
	}
}

// preemptedByScheduler reports whether q carries the DisruptionTarget
// condition a scheduler's preemption sets.
func preemptedByScheduler(q *corev1.Pod) bool {
	for _, c := range q.Status.Conditions {
		if c.Type == corev1.DisruptionTarget && c.Status == corev1.ConditionTrue && c.Reason == corev1.PodReasonPreemptionByScheduler {
			return true
		}
	}
	return false
}

func disruptionMessage(q *corev1.Pod) string {
	for _, c := range q.Status.Conditions {
		if c.Type == corev1.DisruptionTarget {
			return c.Message
		}
	}
	return ""
}
