package scheduler

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	corelisters "k8s.io/client-go/listers/core/v1"
	resourcelisters "k8s.io/client-go/listers/resource/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/utils/clock"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
	"github.com/tessera-gpu/tessera/handoff"
)

// Name is the plugin's name in the registry and in configurations.
const Name = "Tessera"

// Tessera is the scheduler plugin; see the package documentation.
type Tessera struct {
	handle fwk.Handle
	args   *Args
	// clock drives the plugin's own timers and timestamps (gauges, the
	// not-ready sweep, plan durations, backoff wake-ups); the controllers
	// beside it and gang.Manager take one too.
	clock clock.WithTickerAndDelayedExecution
	// status writes scheduling.x-k8s.io PodGroup statuses; nil when
	// podGroupStatus is off (podgroup_status.go).
	status *podGroupStatusWriter
	// health acts on gangs holding Unhealthy GPUs (gpu_health.go).
	health *gpuHealthController
	ledger *gang.Ledger
	mgr    *gang.Manager
	// handoff holds bindings back so the device plugin can name each pod
	// (handoff.go).
	handoff *handoff.Gate
	gangs   *gangRegistry
	logger  klog.Logger

	// handlersSynced report whether the node and pod handlers delivered the
	// initial lists; PreFilter waits for them once, so a restarted scheduler
	// never places onto slices it has not yet learnt are taken.
	handlersSynced []cache.InformerSynced
	synced         atomic.Bool
	// bindsSlicePods is set once Tessera's Bind ran: it comes before
	// DefaultBinder, so PreBind need not patch the assignment (bind.go).
	bindsSlicePods atomic.Bool

	mu sync.Mutex
	// nodeSeen is the last inventory annotation applied per node, so label
	// and status churn does not re-parse it.
	nodeSeen map[string]nodeKey
	// planStart is when each gang's current plan was first attempted.
	planStart map[string]time.Time
	// lastEvent is the last gang-level event reason per gang, so a gang
	// that stays unschedulable does not flood events.
	lastEvent map[string]string
	// turnedDown are slice pods PostFilter saw unschedulable, retried when
	// the ledger gains room (retry.go).
	turnedDown map[types.UID]*v1.Pod
	// widen are single pods whose narrowed DRA attempt failed: their next
	// PreFilter tries every node (dra_narrow.go).
	widen map[types.UID]struct{}
	// retryGen and retryAt are the ledger generation and time of the
	// sweep's last retry (retry.go).
	retryGen uint64
	retryAt  time.Time

	// nominated is the room preemptions freed, kept for their preemptors
	// (preempt.go).
	nominated nominations

	// dra, claims and podLister serve the DRA nodes (dra.go); steering
	// says whether the allocator is being steered (draSteerUID held).
	dra       *draNodes
	claims    cache.Indexer
	templates resourcelisters.ResourceClaimTemplateLister
	podLister corelisters.PodLister
	steering  atomic.Bool
}

type nodeKey struct {
	inventory string
	labels    map[string]string
}

var (
	_ fwk.QueueSortPlugin   = &Tessera{}
	_ fwk.PreFilterPlugin   = &Tessera{}
	_ fwk.FilterPlugin      = &Tessera{}
	_ fwk.PostFilterPlugin  = &Tessera{}
	_ fwk.PreScorePlugin    = &Tessera{}
	_ fwk.ScorePlugin       = &Tessera{}
	_ fwk.ReservePlugin     = &Tessera{}
	_ fwk.PermitPlugin      = &Tessera{}
	_ fwk.PreBindPlugin     = &Tessera{}
	_ fwk.BindPlugin        = &Tessera{}
	_ fwk.PostBindPlugin    = &Tessera{}
	_ fwk.EnqueueExtensions = &Tessera{}
	_ fwk.SignPlugin        = &Tessera{}
)

// Name returns the plugin's name.
func (pl *Tessera) Name() string { return Name }

// New builds the plugin: decodes and validates its args, creates the ledger
// and gang manager, and feeds them from the scheduler's informers and from
// the PodGroup APIs the cluster serves. Background work stops with ctx.
func New(ctx context.Context, obj runtime.Object, h fwk.Handle) (fwk.Plugin, error) {
	args, err := DecodeArgs(obj)
	if err != nil {
		return nil, err
	}
	registerMetrics()
	logger := klog.FromContext(ctx).WithName(Name)
	pl := &Tessera{handle: h, args: args, clock: clock.RealClock{}, logger: logger, nodeSeen: map[string]nodeKey{},
		planStart: map[string]time.Time{}, lastEvent: map[string]string{}, dra: newDRANodes()}
	pl.ledger = gang.NewLedger(gang.LedgerOptions{OnMismatch: pl.onMismatch})
	pl.handoff = handoff.New(clock.RealClock{}, args.handoffConfirmTimeout())
	pl.mgr = gang.NewManager(pl.ledger, gang.Options{Backoff: args.backoff(), OnReject: pl.onReject})
	pl.gangs = newGangRegistry(pl.mgr, args)
	pl.gangs.request = pl.sliceRequest
	pl.gangs.onChange = pl.onGangChange
	pl.gangs.onGone = pl.forgetGang

	if h.SharedInformerFactory() == nil {
		return nil, fmt.Errorf("%s: the framework handle has no informer factory", Name)
	}
	nodes := h.SharedInformerFactory().Core().V1().Nodes().Informer()
	nreg, err := nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { pl.nodeChanged(obj) },
		UpdateFunc: func(_, obj any) { pl.nodeChanged(obj) },
		DeleteFunc: pl.nodeDeleted,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: watching nodes: %w", Name, err)
	}
	// Preemption reads PodDisruptionBudgets (preempt.go); asking for the
	// informer here registers it before the factory starts.
	pdbs := h.SharedInformerFactory().Policy().V1().PodDisruptionBudgets().Informer()
	pods := h.SharedInformerFactory().Core().V1().Pods().Informer()
	preg, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { pl.podChanged(obj) },
		UpdateFunc: func(_, obj any) { pl.podChanged(obj) },
		DeleteFunc: pl.podDeleted,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: watching pods: %w", Name, err)
	}
	csynced, err := pl.watchClaims(h)
	if err != nil {
		return nil, err
	}
	pl.handlersSynced = []cache.InformerSynced{nreg.HasSynced, preg.HasSynced, pdbs.HasSynced, csynced}

	// The PodGroup status writer and the GPU-health controller run beside
	// the plugin; it only feeds them. Without a kubeconfig (unit tests)
	// scheduling.x-k8s.io PodGroups get neither status nor conditions.
	var dc dynamic.Interface
	if cfg := h.KubeConfig(); cfg != nil {
		if dc, err = dynamic.NewForConfig(cfg); err != nil {
			return nil, fmt.Errorf("%s: dynamic client for PodGroups: %w", Name, err)
		}
	}
	if *args.PodGroupStatus && dc != nil {
		pl.status = newPodGroupStatusWriter(pl.gangs, dc, pl.clock, args.sweepInterval())
	}
	pl.health = newGPUHealthController(pl.gangs, *args.UnhealthyGangAction, h.ClientSet(), dc, pl.event, pl.clock, args.sweepInterval())
	go pl.mgr.Run(ctx, args.sweepInterval())
	go pl.refreshGauges(ctx)
	go pl.watchGroupAPIs(ctx)
	if pl.status != nil {
		go pl.status.run(klog.NewContext(ctx, logger.WithName("podgroup-status")))
	}
	go pl.health.run(klog.NewContext(ctx, logger.WithName("gpu-health")))
	go pl.runNotReadyWarnings(klog.NewContext(ctx, logger))
	return pl, nil
}

// waitSynced blocks the first scheduling cycle until the ledger has seen
// every node and pod.
func (pl *Tessera) waitSynced(ctx context.Context) bool {
	if pl.synced.Load() {
		return true
	}
	if !cache.WaitForCacheSync(ctx.Done(), pl.handlersSynced...) {
		return false
	}
	pl.synced.Store(true)
	return true
}

func (pl *Tessera) refreshGauges(ctx context.Context) {
	t := pl.clock.NewTicker(pl.args.sweepInterval())
	defer t.Stop()
	for {
		recordFragmentation(pl.ledger.Fragmentation())
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}

// nodeChanged feeds a node's labels and inventory into the ledger.
func (pl *Tessera) nodeChanged(obj any) {
	node, ok := obj.(*v1.Node)
	if !ok {
		return
	}
	raw, has := node.Annotations[api.AnnotationInventory]
	pl.mu.Lock()
	seen, known := pl.nodeSeen[node.Name]
	if known && seen.inventory == raw && maps.Equal(seen.labels, node.Labels) {
		pl.mu.Unlock()
		return
	}
	if has {
		pl.nodeSeen[node.Name] = nodeKey{inventory: raw, labels: maps.Clone(node.Labels)}
	} else {
		delete(pl.nodeSeen, node.Name)
	}
	pl.mu.Unlock()
	if !has {
		pl.handoff.SetNode(node.Name, false)
		pl.dra.set(node.Name, nil)
		if known {
			pl.ledger.RemoveNode(node.Name)
		}
		pl.health.setNodeHealth(node.Name, nil)
		return
	}
	inv, err := api.ParseInventory(raw)
	pl.handoff.SetNode(node.Name, err == nil && inv.ReportsAllocation)
	pl.dra.set(node.Name, inv)
	if err == nil {
		pl.health.setNodeHealth(node.Name, badGPUs(inv))
		if err = pl.ledger.UpsertNode(node.Name, node.Labels, inv); err == nil {
			// A new node, a GPU healthy again, new labels: maybe room now.
			pl.retryTurnedDown("node inventory or labels changed")
		}
	} else {
		pl.ledger.RemoveNode(node.Name)
	}
	if err != nil {
		pl.logger.Error(err, "Node's GPU inventory is not usable; no slices are placed on it", "node", klog.KObj(node))
		pl.event(node, v1.EventTypeWarning, "InvalidGPUInventory", "Scheduling",
			"annotation %s is not usable, no GPU slices are placed on this node: %v", api.AnnotationInventory, err)
	}
}

func (pl *Tessera) nodeDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	node, ok := obj.(*v1.Node)
	if !ok {
		return
	}
	pl.mu.Lock()
	delete(pl.nodeSeen, node.Name)
	pl.mu.Unlock()
	pl.dra.set(node.Name, nil)
	pl.health.setNodeHealth(node.Name, nil)
	pl.handoff.SetNode(node.Name, false)
	pl.ledger.RemoveNode(node.Name)
}

// podChanged feeds a pod's slice annotations into the ledger and its gang
// membership into the registry.
func (pl *Tessera) podChanged(obj any) {
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	ref, inGang := podspec.GangOf(pod)
	if !pl.relevant(pod) {
		if inGang {
			pl.gangs.setMember(ref, string(pod.UID), nil)
		}
		// A claim pod that asks for no slices (a whole-GPU or memory claim
		// the in-tree allocator placed) still holds what its claims hold.
		if hasClaims(pod) {
			if podTerminal(pod) {
				pl.ledger.RemovePod(string(pod.UID))
			} else if held, onDRA := pl.claimHeld(pod); onDRA {
				pl.ledger.SetPod(gang.PodInfo{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name, Node: pod.Spec.NodeName, Allocated: held})
			}
		}
		return
	}
	if podTerminal(pod) {
		pl.forgetPod(pod, ref, inGang)
		return
	}
	if pod.Spec.NodeName != "" {
		pl.forgetTurnedDown(pod.UID)
		pl.observeHandoff(pod)
	}
	key := ""
	if inGang {
		key = ref.Key
		if pl.gangs.setMember(ref, string(pod.UID), pod) && pod.Spec.NodeName == "" {
			pl.activateIfKnown(ref.Key, pod)
		}
		pl.markGroupDirty(ref)
	}
	info, err := gang.PodInfoFromAnnotations(string(pod.UID), pod.Namespace, pod.Name, key, pod.Spec.NodeName, pod.Annotations)
	if err != nil {
		pl.logger.Error(err, "Malformed slice annotation; treated as absent", "pod", klog.KObj(pod))
		pl.event(pod, v1.EventTypeWarning, "MalformedSliceAnnotation", "Scheduling", "%v", err)
	}
	if held, onDRA := pl.claimHeld(pod); onDRA {
		// On a DRA node the claims are the allocation (dra.go).
		info.Allocated = held
	}
	pl.ledger.SetPod(info)
}

func (pl *Tessera) podDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*v1.Pod)
	if !ok {
		return
	}
	ref, inGang := podspec.GangOf(pod)
	pl.forgetTurnedDown(pod.UID)
	pl.takeWiden(pod.UID)
	pl.handoff.Forget(string(pod.UID))
	pl.mgr.PodDeleted(string(pod.UID))
	if pod.Spec.NodeName == "" && !inGang {
		// A single preemptor that went away leaves its nomination.
		pl.releaseNomination(gang.PodPreemptor(pod.Namespace, pod.Name, 0, 0).Key)
	}
	if inGang {
		pl.gangs.setMember(ref, string(pod.UID), nil)
		pl.markGroupDirty(ref)
	}
	if pod.Spec.NodeName != "" && (pl.relevant(pod) || hasClaims(pod)) {
		pl.retryTurnedDown("slice pod deleted")
	}
}

func (pl *Tessera) forgetPod(pod *v1.Pod, ref podspec.GangRef, inGang bool) {
	pl.forgetTurnedDown(pod.UID)
	pl.handoff.Forget(string(pod.UID))
	pl.mgr.PodDeleted(string(pod.UID))
	if inGang {
		pl.gangs.setMember(ref, string(pod.UID), pod)
		pl.markGroupDirty(ref)
	}
	if pod.Spec.NodeName != "" {
		pl.retryTurnedDown("slice pod finished")
	}
}

func (pl *Tessera) markGroupDirty(ref podspec.GangRef) {
	if ref.Source == podspec.GangPodGroup {
		pl.status.enqueue(ref.Key)
	}
}

// onGangChange runs after the registry pushed a gang spec to the manager.
func (pl *Tessera) onGangChange(key string, spec gang.GangSpec, err error, added bool) {
	if err != nil {
		pl.logger.Error(err, "Gang spec rejected", "gang", key)
		if obj := pl.gangs.object(key); obj != nil {
			pl.event(obj, v1.EventTypeWarning, "InvalidGang", "Scheduling", "%v", err)
		}
		return
	}
	pl.logger.V(4).Info("Gang known", "gang", key, "source", spec.Source, "minMember", spec.MinMember,
		"request", spec.Request, "required", spec.RequiredTopology, "preferred", spec.PreferredTopology)
	if added {
		pl.activateGang(key)
	}
}

// forgetGang drops the plugin's per-gang state of a gang whose object and
// members are all gone; without it, a gang deleted before it was placed
// (rejected, unschedulable, never declared) kept its entries for good.
func (pl *Tessera) forgetGang(key string) {
	pl.mu.Lock()
	delete(pl.planStart, key)
	delete(pl.lastEvent, key)
	pl.mu.Unlock()
	// A preemptor gang that went away leaves its nomination (no retry
	// here: this runs inside the gang registry's callbacks; the next
	// ledger change or sweep retries the pods kept off its nodes).
	pl.nominated.release(key)
}

// activateGang moves the gang's pending pods back to the active queue: their
// plan was just made, or their gang became known or left backoff.
func (pl *Tessera) activateGang(key string) {
	pods := pl.gangs.pendingMembers(key)
	if len(pods) > 0 {
		pl.handle.Activate(pl.logger, pods)
	}
}

// onReject runs (without gang locks) for every whole-gang rejection: the
// gang's waiting pods are rejected, and its pods are retried when the
// backoff ends.
func (pl *Tessera) onReject(r gang.Rejection) {
	gangsRejected.WithLabelValues(rejectCause(r.Reason)).Inc()
	pl.logger.V(2).Info("Gang rejected; all its slices are free again", "gang", r.Gang, "reason", r.Reason,
		"waitingPods", len(r.PodUIDs), "backoffUntil", r.BackoffUntil)
	for _, uid := range r.PodUIDs {
		if wp := pl.handle.GetWaitingPod(types.UID(uid)); wp != nil {
			wp.Reject(Name, r.Reason)
		}
	}
	pl.mu.Lock()
	delete(pl.planStart, r.Gang)
	pl.mu.Unlock()
	pl.gangEvent(r.Gang, v1.EventTypeWarning, "GangRejected", r.Reason, nil)
	wait := time.Until(r.BackoffUntil)
	if wait < 0 {
		wait = 0
	}
	key := r.Gang
	pl.clock.AfterFunc(wait+50*time.Millisecond, func() { pl.activateGang(key) })
}

func (pl *Tessera) onMismatch(m gang.Mismatch) {
	handoffMismatches.WithLabelValues(string(m.Reason)).Inc()
	if m.Reason == gang.MismatchAllocated && pl.health != nil {
		// Ranks of a gang may now share a GPU (health.go).
		pl.health.allocationDiffers()
	}
	pl.logger.Info("Slice hand-off mismatch", "reason", m.Reason, "pod", m.Pod, "node", m.Node, "detail", m.Detail)
	ns, name, ok := strings.Cut(m.Pod, "/")
	if !ok {
		return
	}
	pod, err := pl.handle.SharedInformerFactory().Core().V1().Pods().Lister().Pods(ns).Get(name)
	if err != nil {
		return
	}
	pl.event(pod, v1.EventTypeWarning, string(m.Reason), "Scheduling", "%s", m.Detail)
}

func (pl *Tessera) event(obj runtime.Object, typ, reason, action, note string, args ...any) {
	if rec := pl.handle.EventRecorder(); rec != nil && obj != nil {
		rec.Eventf(obj, nil, typ, reason, action, note, args...)
	}
}

// gangEvent records an event on the gang's object (PodGroup), or on one of
// its pending pods when it has none (LeaderWorkerSet, a PodGroup not created
// yet), falling back to pod, the member being scheduled; a reason repeated
// for the same gang is recorded once. Nothing is marked recorded until an
// event really is: the plugin's pod handler and the scheduling queue see a
// new pod independently, so the first attempt may find no member yet.
func (pl *Tessera) gangEvent(key, typ, reason, msg string, pod *v1.Pod) {
	sig := reason + "\x00" + msg
	pl.mu.Lock()
	seen := pl.lastEvent[key] == sig
	pl.mu.Unlock()
	if seen {
		return
	}
	var target runtime.Object
	if obj := pl.gangs.object(key); obj != nil {
		target = obj
	} else {
		for _, p := range pl.gangs.pendingMembers(key) {
			target = p
			break
		}
	}
	if target == nil && pod != nil {
		target = pod
	}
	if target == nil {
		return
	}
	pl.mu.Lock()
	pl.lastEvent[key] = sig
	pl.mu.Unlock()
	pl.event(target, typ, reason, "Scheduling", "%s", msg)
}
