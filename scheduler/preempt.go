package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	schedutil "k8s.io/kubernetes/pkg/scheduler/util"

	"github.com/tessera-gpu/tessera/gang"
)

// Whole-gang preemption (issue 19). When a slice pod, or the whole gang of a
// gang member, fits nowhere, PostFilter asks the ledger (gang.Ledger.Preempt)
// for the cheapest set of strictly lower-priority victims whose eviction lets
// the whole preemptor fit in one domain of its required topology, and evicts
// them:
//
//   - victims are whole units: a single pod, or a gang with all its pods. A
//     gang that is planned but has no bound member loses its plan in memory
//     (its pods stay pending and are planned again later); otherwise every
//     pod of the unit gets the DisruptionTarget condition (reason
//     PreemptionByScheduler) and is deleted, as kube-scheduler's default
//     preemption does, and its controller recreates it;
//   - the room is nominated for the preemptor: until it is placed, deleted,
//     or nominationTimeoutSeconds pass, slice pods of lower priority are kept
//     off the nodes where the victims were (Filter for single pods, the
//     planner's eligibility for gangs). Equal or higher priority pods may
//     still take it, as with kube-scheduler's nominated pods. A single
//     preemptor also gets status.nominatedNodeName;
//   - while any victim still exists, the preemptor does not preempt again: it
//     waits, and the ledger wakes it when the victims' slices are free;
//   - preemptionPolicy: Never preempts nobody; nor does a replacement member
//     of a running gang (it must fit next to its gang as things stand);
//   - PodDisruptionBudgets are a preference, as in kube-scheduler: sets that
//     violate none win; if every set that helps violates one, the fewest
//     violations win (gang.Ledger.Preempt documents the whole order).
//
// Every preemption records a Preempting event on the preemptor (pod or gang
// object) and a Preempted event on each victim, and counts in
// tessera_preemption_attempts_total and tessera_preemption_victims_total.

// nomination is room a preemption freed, kept for its preemptor.
type nomination struct {
	priority int32
	nodes    map[string]bool
	// victims are the pods evicted for it, by UID with their names; the
	// preemptor waits while any of them exists.
	victims map[types.UID]types.NamespacedName
	expires time.Time
}

type nominations struct {
	mu    sync.Mutex
	byKey map[string]*nomination
	// held mirrors len(byKey) so Filter, which runs per node and pod in
	// parallel, checks for "none" without the lock.
	held atomic.Int32
}

// get returns key's nomination; an expired one is dropped.
func (n *nominations) get(key string, now time.Time) *nomination {
	n.mu.Lock()
	defer n.mu.Unlock()
	nm := n.byKey[key]
	if nm != nil && !now.Before(nm.expires) {
		delete(n.byKey, key)
		n.held.Store(int32(len(n.byKey)))
		return nil
	}
	return nm
}

func (n *nominations) set(key string, nm *nomination) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.byKey == nil {
		n.byKey = map[string]*nomination{}
	}
	n.byKey[key] = nm
	n.held.Store(int32(len(n.byKey)))
}

// release drops key's nomination; true if there was one.
func (n *nominations) release(key string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.byKey[key]
	delete(n.byKey, key)
	n.held.Store(int32(len(n.byKey)))
	return ok
}

// reservedFor names the preemptor node is nominated for, if that is
// another preemptor (not self) of priority above priority.
func (n *nominations) reservedFor(node, self string, priority int32, now time.Time) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for key, nm := range n.byKey {
		if !now.Before(nm.expires) {
			delete(n.byKey, key)
			n.held.Store(int32(len(n.byKey)))
			continue
		}
		if key != self && nm.priority > priority && nm.nodes[node] {
			return key, true
		}
	}
	return "", false
}

// empty reports whether no nomination is held: one atomic load, for hot
// paths.
func (n *nominations) empty() bool { return n.held.Load() == 0 }

// preemptorKey is the nomination key of pod p: its gang's key, or the
// single-pod preemptor key (gang.PodPreemptor).
func preemptorKey(p gang.Pod) string {
	if p.Gang != "" {
		return p.Gang
	}
	return gang.PodPreemptor(p.Namespace, p.Name, p.Slices, 0).Key
}

// unreserved wraps eligible so that nodes nominated for a higher-priority
// preemptor other than self are not eligible.
func (pl *Tessera) unreserved(eligible func(string) bool, self string, priority int32) func(string) bool {
	if pl.nominated.empty() {
		return eligible
	}
	now := pl.clock.Now()
	return func(node string) bool {
		if _, ok := pl.nominated.reservedFor(node, self, priority, now); ok {
			return false
		}
		return eligible == nil || eligible(node)
	}
}

// preemptOutcome is what one preemption attempt did, for PostFilter's
// status and the metric.
type preemptOutcome struct {
	result string // the metric label
	msg    string
	node   string // the node to nominate a single preemptor to
	ok     bool   // victims were evicted (or none were needed)
}

// preempt tries to make room for pod (p as the gang manager sees it) by
// evicting lower-priority whole units.
func (pl *Tessera) preempt(ctx context.Context, pod *v1.Pod, p gang.Pod) preemptOutcome {
	logger := klog.FromContext(ctx)
	if !pl.args.preemption() {
		return preemptOutcome{result: "disabled", msg: "preemption is off (plugin args)"}
	}
	if pod.Spec.PreemptionPolicy != nil && *pod.Spec.PreemptionPolicy == v1.PreemptNever {
		return preemptOutcome{result: "never", msg: "preemptionPolicy is Never"}
	}
	key := preemptorKey(p)
	now := pl.clock.Now()
	if nm := pl.nominated.get(key, now); nm != nil {
		if left := pl.victimsLeft(nm); left > 0 {
			return preemptOutcome{result: "waiting", msg: fmt.Sprintf("waiting for %d preempted pods to terminate", left)}
		}
	}
	var spec gang.GangSpec
	if p.Gang != "" {
		s, ok := pl.gangs.spec(p.Gang)
		if !ok {
			return preemptOutcome{result: "not_ready", msg: "the gang is not known yet"}
		}
		if st, ok := pl.mgr.Status(p.Gang); ok && len(st.Slots) > 0 {
			// A planned or running gang: a waiting member cannot preempt for
			// a plan that holds its room already, and a replacement member
			// of a running gang must fit next to it as things stand.
			return preemptOutcome{result: "not_eligible", msg: "the gang holds a plan or runs; only a whole unplanned gang preempts"}
		}
		spec = s
	} else {
		spec = gang.PodPreemptor(p.Namespace, p.Name, p.Slices, podPriority(pod))
	}
	req := &gang.PreemptRequest{Spec: spec, Now: now}
	nodes, err := pl.handle.SnapshotSharedLister().NodeInfos().List()
	if err != nil {
		return preemptOutcome{result: "error", msg: fmt.Sprintf("listing nodes: %v", err)}
	}
	req.Eligible = pl.unreserved(eligibility(logger, pod, nodes), key, spec.Priority)
	cands, pods, err := pl.victimCandidates(spec)
	if err != nil {
		return preemptOutcome{result: "error", msg: err.Error()}
	}
	if len(cands) == 0 {
		// Nothing of lower priority holds slices (the common case when
		// every pod has the default priority): no search needed.
		return preemptOutcome{result: "no_victims", msg: "preemption would not help: no lower-priority slice pods"}
	}
	req.Candidates = cands
	req.PDBAllowed, err = pl.pdbBudgets(cands, pods)
	if err != nil {
		return preemptOutcome{result: "error", msg: err.Error()}
	}
	res, err := pl.mgr.Preempt(req)
	if err != nil {
		var ue *gang.UnschedulableError
		if errors.As(err, &ue) {
			return preemptOutcome{result: "no_victims", msg: "preemption would not help: " + ue.Msg}
		}
		return preemptOutcome{result: "error", msg: err.Error()}
	}
	if len(res.Victims) == 0 {
		// It fits as the ledger stands now (something was freed since the
		// cycle's plan failed): try again, evicting nobody.
		pl.activatePreemptor(p)
		return preemptOutcome{result: "fits", msg: "fits without preemption now", ok: true}
	}
	nm := &nomination{priority: spec.Priority, nodes: map[string]bool{}, victims: map[types.UID]types.NamespacedName{},
		expires: now.Add(pl.args.nominationTimeout())}
	for _, sl := range res.Slots {
		nm.nodes[sl.Node] = true
	}
	var names []string
	evicted := 0
	for _, u := range res.Victims {
		names = append(names, u.Key)
		for _, uid := range u.Pods {
			vp := pods[types.UID(uid)]
			if vp == nil {
				continue
			}
			if vp.Spec.NodeName != "" {
				nm.nodes[vp.Spec.NodeName] = true
			}
		}
	}
	// Nominate before evicting: the victims' slices may be free before the
	// last API call returns, and lower-priority pods must not take them.
	pl.nominated.set(key, nm)
	what := "pod " + klog.KObj(pod).String()
	if p.Gang != "" {
		what = "gang " + p.Gang
	}
	domain := res.Domain
	if domain == "" && len(res.Slots) > 0 {
		domain = res.Slots[0].Node
	}
	for _, u := range res.Victims {
		evicted += pl.evictUnit(ctx, u, pods, nm, fmt.Sprintf("preempted by %s (priority %d) to place it in %s", what, spec.Priority, domain))
	}
	preemptionVictims.Add(float64(evicted))
	msg := fmt.Sprintf("preempting %d pods in %d units of lower priority (%s) to place %s (priority %d) in %s",
		res.Cost.Pods, len(res.Victims), strings.Join(names, ", "), what, spec.Priority, domain)
	if res.Cost.PDBViolations > 0 {
		msg += fmt.Sprintf("; %d beyond their PodDisruptionBudgets (every set that helps violates one)", res.Cost.PDBViolations)
	}
	logger.V(2).Info("Preempting", "preemptor", what, "priority", spec.Priority, "domain", domain,
		"victims", names, "pods", res.Cost.Pods, "exact", res.Exact, "plans", res.Plans)
	if p.Gang != "" {
		pl.gangEvent(p.Gang, v1.EventTypeNormal, "Preempting", msg, pod)
	} else {
		pl.event(pod, v1.EventTypeNormal, "Preempting", "Preempt", "%s", msg)
	}
	out := preemptOutcome{result: "preempted", msg: msg, ok: true}
	if p.Gang == "" && len(res.Slots) > 0 {
		out.node = res.Slots[0].Node
	}
	return out
}

// victimCandidates lists the whole units whose priority is below spec's
// (gang.Ledger.Preempt ignores the others anyway): every bound single slice
// pod, and every gang that holds slices (bound members or a plan) with all
// its pods. Pods already terminating are not candidates: their slices are
// on their way out. The preemptor's own pods are never candidates.
func (pl *Tessera) victimCandidates(spec gang.GangSpec) ([]gang.VictimUnit, map[types.UID]*v1.Pod, error) {
	all, err := pl.handle.SharedInformerFactory().Core().V1().Pods().Lister().List(labels.Everything())
	if err != nil {
		return nil, nil, fmt.Errorf("listing pods: %w", err)
	}
	pods := map[types.UID]*v1.Pod{}
	type unit struct {
		u        gang.VictimUnit
		bound    bool
		started  time.Time
		unstated bool // a member has not started
	}
	units := map[string]*unit{}
	for _, pod := range all {
		if pod.DeletionTimestamp != nil || podTerminal(pod) {
			continue
		}
		gp, ok := pl.gangPod(pod)
		if !ok {
			continue
		}
		key := gp.Gang
		if key == "" {
			if pod.Spec.NodeName == "" {
				continue // a pending single pod holds nothing
			}
			key = pod.Namespace + "/" + pod.Name
		}
		if key == spec.Key || (gp.Gang == "" && gang.PodPreemptor(pod.Namespace, pod.Name, gp.Slices, 0).Key == spec.Key) {
			continue
		}
		un := units[key]
		if un == nil {
			un = &unit{u: gang.VictimUnit{Key: key, Gang: gp.Gang, Priority: podPriority(pod)}}
			units[key] = un
		}
		un.u.Pods = append(un.u.Pods, string(pod.UID))
		un.u.Priority = max(un.u.Priority, podPriority(pod))
		un.bound = un.bound || pod.Spec.NodeName != ""
		if st := pod.Status.StartTime; st != nil {
			un.started = maxTime(un.started, st.Time)
		} else {
			un.unstated = true
		}
		pods[pod.UID] = pod
	}
	var out []gang.VictimUnit
	for _, un := range units {
		if un.u.Priority >= spec.Priority {
			continue
		}
		if un.u.Gang != "" && !un.bound {
			if st, ok := pl.mgr.Status(un.u.Gang); !ok || len(st.Slots) == 0 {
				continue // an unplanned gang holds nothing
			}
		}
		if !un.unstated {
			un.u.Started = un.started
		}
		sort.Strings(un.u.Pods)
		out = append(out, un.u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, pods, nil
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// pdbBudgets fills each candidate's PDBs (budgets whose selector matches a
// pod of it, by namespace/name) and returns every such budget's allowed
// disruptions.
func (pl *Tessera) pdbBudgets(cands []gang.VictimUnit, pods map[types.UID]*v1.Pod) (map[string]int, error) {
	pdbs, err := pl.handle.SharedInformerFactory().Policy().V1().PodDisruptionBudgets().Lister().List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing PodDisruptionBudgets: %w", err)
	}
	if len(pdbs) == 0 {
		return nil, nil
	}
	type sel struct {
		pdb *policyv1.PodDisruptionBudget
		s   labels.Selector
	}
	byNS := map[string][]sel{}
	for _, pdb := range pdbs {
		if pdb.Spec.Selector == nil {
			continue // selects nothing in policy/v1
		}
		s, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil {
			continue // the API server refuses these; nothing to honour
		}
		byNS[pdb.Namespace] = append(byNS[pdb.Namespace], sel{pdb, s})
	}
	allowed := map[string]int{}
	for i := range cands {
		u := &cands[i]
		for _, uid := range u.Pods {
			pod := pods[types.UID(uid)]
			if pod == nil {
				continue
			}
			for _, b := range byNS[pod.Namespace] {
				if !b.s.Matches(labels.Set(pod.Labels)) {
					continue
				}
				name := b.pdb.Namespace + "/" + b.pdb.Name
				if u.PDBs == nil {
					u.PDBs = map[string]int{}
				}
				u.PDBs[name]++
				allowed[name] = int(b.pdb.Status.DisruptionsAllowed)
			}
		}
	}
	return allowed, nil
}

// evictUnit evicts one victim unit and returns how many pods it deleted or
// preempted in memory. A gang with no bound member loses its plan in
// memory; otherwise each pod waiting at the Permit barrier is sent back to
// the queue, and every other pod is first marked (DisruptionTarget, reason
// PreemptionByScheduler, as kube-scheduler's preemption does, so its
// controller and Job pod-failure policies can tell) and then deleted: all
// marks before the first delete, so an observer never sees part of a gang
// gone while the rest looks untouched.
func (pl *Tessera) evictUnit(ctx context.Context, u gang.VictimUnit, pods map[types.UID]*v1.Pod, nm *nomination, why string) int {
	logger := klog.FromContext(ctx)
	bound := false
	for _, uid := range u.Pods {
		if p := pods[types.UID(uid)]; p != nil && p.Spec.NodeName != "" {
			bound = true
		}
	}
	if u.Gang != "" && !bound {
		if rej := pl.mgr.Preempted(u.Gang, fmt.Sprintf("gang %s: plan %s", u.Gang, why)); rej != nil {
			pl.gangEvent(u.Gang, v1.EventTypeWarning, "Preempted", "plan freed: "+why, nil)
			return len(u.Pods)
		}
		// Its plan went meanwhile (timed out, rejected): it holds nothing,
		// and its pending pods are left alone.
		return 0
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n := 0
	var marked []*v1.Pod
	for _, uid := range u.Pods {
		victim := pods[types.UID(uid)]
		if victim == nil {
			continue
		}
		if wp := pl.handle.GetWaitingPod(victim.UID); wp != nil && wp.Preempt(Name, why) {
			n++
			pl.event(victim, v1.EventTypeNormal, "Preempted", "Preempt", "%s (in the scheduler's memory)", why)
			continue
		}
		nm.victims[victim.UID] = types.NamespacedName{Namespace: victim.Namespace, Name: victim.Name}
		if err := pl.markVictim(ctx, victim, why); err != nil {
			if !apierrors.IsNotFound(err) {
				logger.Error(err, "Could not mark victim as preempted; deleting it anyway", "victim", klog.KObj(victim))
			}
		}
		marked = append(marked, victim)
	}
	for _, victim := range marked {
		if err := schedutil.DeletePod(ctx, pl.handle.ClientSet(), victim); err != nil && !apierrors.IsNotFound(err) {
			logger.Error(err, "Could not delete preempted pod", "victim", klog.KObj(victim))
			continue
		}
		n++
		pl.event(victim, v1.EventTypeNormal, "Preempted", "Preempt", "%s", why)
	}
	return n
}

// markVictim sets the DisruptionTarget condition on victim.
func (pl *Tessera) markVictim(ctx context.Context, victim *v1.Pod, why string) error {
	newStatus := victim.Status.DeepCopy()
	cond := v1.PodCondition{Type: v1.DisruptionTarget, Status: v1.ConditionTrue, Reason: v1.PodReasonPreemptionByScheduler,
		Message: "tessera-scheduler: " + why, LastTransitionTime: metav1.NewTime(pl.clock.Now())}
	replaced := false
	for i := range newStatus.Conditions {
		if newStatus.Conditions[i].Type == v1.DisruptionTarget {
			newStatus.Conditions[i], replaced = cond, true
		}
	}
	if !replaced {
		newStatus.Conditions = append(newStatus.Conditions, cond)
	}
	return schedutil.PatchPodStatus(ctx, pl.handle.ClientSet(), victim.Name, victim.Namespace, &victim.Status, newStatus)
}

// victimsLeft counts nm's victims whose room is not free yet: those that
// still exist (the informer's view; a pod recreated under the same name
// has another UID), and those gone from the informer's store whose slices
// the ledger still holds. The ledger learns of a deletion through Tessera's
// own event handler, which may run behind the store; counting only the
// store let a preemptor see half its room and preempt again (seen in
// TestPreemptionAtSaturation: a second preemption of 4 single pods).
func (pl *Tessera) victimsLeft(nm *nomination) int {
	lister := pl.handle.SharedInformerFactory().Core().V1().Pods().Lister()
	n := 0
	for uid, name := range nm.victims {
		if p, err := lister.Pods(name.Namespace).Get(name.Name); err == nil && p.UID == uid {
			n++
		} else if _, _, _, held := pl.ledger.Held(string(uid)); held {
			n++
		}
	}
	return n
}

// activatePreemptor moves the preemptor's pending pods back to the active
// queue.
func (pl *Tessera) activatePreemptor(p gang.Pod) {
	if p.Gang != "" {
		pl.activateGang(p.Gang)
	}
}

// releaseNomination drops the nomination of key, when its preemptor is
// placed or gone.
func (pl *Tessera) releaseNomination(key string) {
	if pl.nominated.release(key) {
		pl.logger.V(3).Info("Nomination released", "preemptor", key)
		// Lower-priority pods kept off the nominated nodes may fit now.
		pl.retryTurnedDown("nomination released")
	}
}
