package scheduler

import (
	"context"
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"

	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
)

const stateKey fwk.StateKey = Name

// preFilterState is what PreFilter learnt about the pod for the later
// extension points of this cycle. It is never modified after PreFilter, so
// Clone shares it.
type preFilterState struct {
	pod       gang.Pod
	placement gang.Placement
	// noFit is Filter's reason for nodes without room, built once.
	noFit string
	// draPicks are the slices the pod gets on each candidate DRA node,
	// which the DRA allocator was steered to (dra.go); nil without any.
	draPicks draPicks
	// viaClaims: the pod asks for slices through claim templates, which
	// only a DRA node can serve.
	viaClaims bool
	// viaResource: the pod asks for the tessera.dev/gpu-slice extended
	// resource, which a DRA node serves only once its kubelet stops
	// reporting device-plugin slices (dra.go, midSwitch).
	viaResource bool
	// narrowed is how many DRA nodes a single pod was restricted to in
	// this attempt (dra_narrow.go); 0 when it was not.
	narrowed int
}

// Clone implements fwk.StateData.
func (s *preFilterState) Clone() fwk.StateData { return s }

func getState(cs fwk.CycleState) (*preFilterState, bool) {
	d, err := cs.Read(stateKey)
	if err != nil {
		return nil, false
	}
	s, ok := d.(*preFilterState)
	return s, ok
}

// gangPod is the pod as the gang manager sees it; ok is false for pods that
// ask for no slices (Tessera leaves them alone).
func (pl *Tessera) gangPod(pod *v1.Pod) (gang.Pod, bool) {
	n := pl.sliceRequest(pod)
	if n == 0 {
		return gang.Pod{}, false
	}
	p := gang.Pod{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name, Slices: n}
	if ref, ok := podspec.GangOf(pod); ok && !(ref.Source == podspec.GangNative && pl.gangs.isSingle(ref.Key)) {
		p.Gang = ref.Key
	}
	return p, true
}

// PreFilter skips pods that ask for no slices (Filter and Score then cost
// them nothing). For a gang member it plans the whole gang if needed and
// restricts the pod to its planned node.
func (pl *Tessera) PreFilter(ctx context.Context, cs fwk.CycleState, pod *v1.Pod, nodes []fwk.NodeInfo) (*fwk.PreFilterResult, *fwk.Status) {
	// The allocator hold of the cycle before, if it ended before Filter.
	pl.unsteerDRA()
	p, ok := pl.gangPod(pod)
	if !ok {
		return nil, fwk.NewStatus(fwk.Skip)
	}
	if !pl.waitSynced(ctx) {
		return nil, fwk.NewStatus(fwk.Error, "the GPU slice ledger has not synced with the cluster yet")
	}
	logger := klog.FromContext(ctx)
	viaClaims := pl.claimSliceRequest(pod) > 0
	viaResource := podspec.SliceRequest(pod) > 0
	planning := false
	if p.Gang != "" {
		p.Eligible = pl.unreserved(eligibility(logger, pod, nodes), p.Gang, podPriority(pod))
		if pl.dra.any() || viaClaims {
			eligible := p.Eligible
			switching := func(string) bool { return false }
			if viaResource {
				switching = pl.draSwitching(nodes)
			}
			p.Eligible = func(node string) bool {
				return pl.draUsable(node) && (!viaClaims || pl.dra.get(node) != nil) && !switching(node) && eligible(node)
			}
		}
		st, _ := pl.mgr.Status(p.Gang)
		planning = len(st.Slots) == 0
		if planning {
			pl.mu.Lock()
			if _, ok := pl.planStart[p.Gang]; !ok {
				pl.planStart[p.Gang] = pl.clock.Now()
			}
			pl.mu.Unlock()
		}
	}
	placement, err := pl.mgr.PreFilter(p)
	if err != nil {
		var ue *gang.UnschedulableError
		if errors.As(err, &ue) {
			if planning {
				planAttempts.WithLabelValues("unschedulable").Inc()
			}
			logger.V(3).Info("Gang cannot be placed now", "pod", klog.KObj(pod), "gang", p.Gang, "reason", ue.Msg)
			// Events of one reason on one object merge into a series that
			// keeps the first note, so "not declared yet" gets its own reason.
			reason := "GangUnschedulable"
			if _, known := pl.gangs.spec(p.Gang); !known {
				reason = "GangNotReady"
			}
			pl.gangEvent(p.Gang, v1.EventTypeWarning, reason, ue.Msg, pod)
			return nil, fwk.NewStatus(fwk.UnschedulableAndUnresolvable, ue.Msg)
		}
		if planning {
			planAttempts.WithLabelValues("error").Inc()
		}
		return nil, fwk.AsStatus(fmt.Errorf("planning gang %s: %w", p.Gang, err))
	}
	// A single pod that may go to DRA nodes is tried on the DRA nodes it
	// fits best first (dra_narrow.go); the steering then covers only them.
	var narrowedTo *fwk.PreFilterResult
	steerNodes, narrowed := nodes, 0
	if placement.Node == "" {
		if keep, draNodes, ok := pl.narrowDRA(logger, pod, p, nodes, viaResource); ok {
			narrowedTo, steerNodes, narrowed = &fwk.PreFilterResult{NodeNames: keep}, draNodes, len(draNodes)
		}
	}
	picks, err := pl.steerDRA(ctx, pod, p, placement, steerNodes)
	if err != nil {
		return nil, fwk.AsStatus(err)
	}
	cs.Write(stateKey, &preFilterState{pod: p, placement: placement, draPicks: picks, viaClaims: viaClaims, viaResource: viaResource, narrowed: narrowed,
		noFit: fmt.Sprintf("no GPU has %d free slices (a request above one GPU's slices needs that many whole, free GPUs)", p.Slices)})
	if placement.Node == "" {
		return narrowedTo, nil
	}
	if planning {
		planAttempts.WithLabelValues("planned").Inc()
		pl.releaseNomination(p.Gang)
		logger.V(2).Info("Planned gang", "gang", p.Gang, "pod", klog.KObj(pod), "node", placement.Node)
		// The rest of the gang has a reserved place now: bring its pending
		// members back from the unschedulable queue.
		pl.activateGang(p.Gang)
	}
	return &fwk.PreFilterResult{NodeNames: sets.New(placement.Node)}, nil
}

// PreFilterExtensions returns nil: the ledger, not the snapshot's pods,
// tracks slices.
func (pl *Tessera) PreFilterExtensions() fwk.PreFilterExtensions { return nil }
