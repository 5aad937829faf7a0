package scheduler

import (
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
	"github.com/tessera-gpu/tessera/gang"
)

// groupInfo is what a PodGroup object (scheduling-plugins CRD or native
// scheduling.k8s.io/v1beta1) says about its gang.
type groupInfo struct {
	source    gang.Source
	minMember int
	// notGang: a native PodGroup with the basic policy; its pods are
	// scheduled one by one.
	notGang   bool
	timeout   time.Duration
	required  string
	preferred string
	priority  int32
	created   time.Time
	obj       runtime.Object // for events
}

type memberInfo struct {
	slices   int
	priority int32
	created  time.Time
	lwsSize  int
	lwsExcl  string
	pod      *v1.Pod
}

// gangRegistry merges gang objects and member pods into gang.GangSpecs and
// keeps the manager's gangs current. The planner needs each member's slice
// request, which only the pods carry, so a gang is known to the manager once
// its object (or, for LeaderWorkerSet, a member) and one member are seen.
type gangRegistry struct {
	mgr      *gang.Manager
	args     *Args
	onChange func(key string, spec gang.GangSpec, err error, added bool)
	// onGone runs after a sync that left nothing of the gang: no object,
	// no member; the plugin forgets its per-gang state then.
	onGone func(key string)

	// request is a member's slice count (Tessera.sliceRequest).
	request func(*v1.Pod) int
	mu      sync.Mutex
	groups  map[string]*groupInfo
	members map[string]map[string]*memberInfo // gang key → pod UID → member
	applied map[string]gang.GangSpec
	// done holds finished members per gang: pod UID → succeeded.
	done map[string]map[string]bool
	// leaderReady holds the LeaderWorkerSets (namespace/name) with
	// startupPolicy LeaderReady: LWS creates their groups' workers only
	// once the leader is Ready, so their leaders bind first (Barrier 1).
	leaderReady map[string]bool
}

func newGangRegistry(mgr *gang.Manager, args *Args) *gangRegistry {
	return &gangRegistry{mgr: mgr, args: args, request: podspec.SliceRequest, groups: map[string]*groupInfo{},
		members: map[string]map[string]*memberInfo{}, applied: map[string]gang.GangSpec{},
		done: map[string]map[string]bool{}, leaderReady: map[string]bool{}}
}

// setLWSLeaderReady records whether LeaderWorkerSet nsName (namespace/name)
// starts its groups LeaderReady and updates its groups' specs.
func (r *gangRegistry) setLWSLeaderReady(nsName string, leaderReady bool) {
	r.mu.Lock()
	if r.leaderReady[nsName] == leaderReady {
		r.mu.Unlock()
		return
	}
	if leaderReady {
		r.leaderReady[nsName] = true
	} else {
		delete(r.leaderReady, nsName)
	}
	var keys []string
	for key, ms := range r.members {
		for _, m := range ms {
			if m.pod != nil && m.pod.Namespace+"/"+m.pod.Labels[api.LabelLWSName] == nsName {
				keys = append(keys, key)
				break
			}
		}
	}
	r.mu.Unlock()
	for _, key := range keys {
		r.sync(key)
	}
}

// setGroup records a gang object; nil removes it.
func (r *gangRegistry) setGroup(key string, g *groupInfo) {
	r.mu.Lock()
	if g == nil {
		delete(r.groups, key)
	} else {
		r.groups[key] = g
	}
	r.mu.Unlock()
	r.sync(key)
}

// setMember records (or, with pod nil, removes) a member pod. It reports
// whether the pod is a member the registry had not seen before.
func (r *gangRegistry) setMember(ref podspec.GangRef, uid string, pod *v1.Pod) (added bool) {
	r.mu.Lock()
	ms := r.members[ref.Key]
	_, had := ms[uid]
	added = pod != nil && !had && !podTerminal(pod)
	if pod != nil && podTerminal(pod) {
		if r.done[ref.Key] == nil {
			r.done[ref.Key] = map[string]bool{}
		}
		r.done[ref.Key][uid] = pod.Status.Phase == v1.PodSucceeded
	} else if pod == nil {
		delete(r.done[ref.Key], uid)
		if len(r.done[ref.Key]) == 0 {
			delete(r.done, ref.Key)
		}
	}
	if pod == nil || podTerminal(pod) {
		if ms != nil {
			delete(ms, uid)
			if len(ms) == 0 {
				delete(r.members, ref.Key)
			}
		}
	} else {
		if ms == nil {
			ms = map[string]*memberInfo{}
			r.members[ref.Key] = ms
		}
		ms[uid] = &memberInfo{slices: r.request(pod), priority: podPriority(pod), created: pod.CreationTimestamp.Time,
			lwsSize: podspec.LWSSize(pod), lwsExcl: pod.Annotations[api.AnnotationLWSExclTopo], pod: pod}
	}
	r.mu.Unlock()
	r.sync(ref.Key)
	return added
}

// allMembers returns every gang's live member pods (gang key → pods).
func (r *gangRegistry) allMembers() map[string][]*v1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string][]*v1.Pod, len(r.members))
	for key, ms := range r.members {
		for _, m := range ms {
			if m.pod != nil {
				out[key] = append(out[key], m.pod)
			}
		}
	}
	return out
}

// isSingle reports whether pods of this gang key are scheduled one by one (a
// native PodGroup without a gang policy).
func (r *gangRegistry) isSingle(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.groups[key]
	return g != nil && g.notGang
}

// pendingMembers returns the gang's members that have no node yet.
func (r *gangRegistry) pendingMembers(key string) map[string]*v1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]*v1.Pod{}
	for _, m := range r.members[key] {
		if m.pod != nil && m.pod.Spec.NodeName == "" {
			out[m.pod.Namespace+"/"+m.pod.Name] = m.pod
		}
	}
	return out
}

// unknownSince returns, per gang that has pending members but no spec yet
// (its PodGroup not seen, or not valid), when its oldest pending member was
// created. Native PodGroups without a gang policy are not gangs.
func (r *gangRegistry) unknownSince() map[string]time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]time.Time{}
	for key, ms := range r.members {
		if _, known := r.applied[key]; known {
			continue
		}
		if g := r.groups[key]; g != nil && g.notGang {
			continue
		}
		for _, m := range ms {
			if m.pod == nil || m.pod.Spec.NodeName != "" || m.slices == 0 {
				continue
			}
			if t, ok := out[key]; !ok || m.created.Before(t) {
				out[key] = m.created
			}
		}
	}
	return out
}

func (r *gangRegistry) object(key string) runtime.Object {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g := r.groups[key]; g != nil {
		return g.obj
	}
	return nil
}

func (r *gangRegistry) spec(key string) (gang.GangSpec, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.applied[key]
	return s, ok
}

// build computes the spec of key; ok is false while it cannot be known.
func (r *gangRegistry) buildLocked(key string) (gang.GangSpec, bool) {
	ms := r.members[key]
	g := r.groups[key]
	spec := gang.GangSpec{Key: key, ScheduleTimeout: r.args.scheduleTimeout(),
		RequiredTopology: *r.args.DefaultRequiredTopology, PreferredTopology: *r.args.DefaultPreferredTopology}
	var reqs []int
	for _, m := range ms {
		if m.slices > 0 {
			reqs = append(reqs, m.slices)
		}
		spec.Priority = max(spec.Priority, m.priority)
	}
	if len(reqs) == 0 {
		return gang.GangSpec{}, false
	}
	switch {
	case g != nil && g.notGang:
		return gang.GangSpec{}, false
	case g != nil:
		spec.Source, spec.MinMember, spec.Created = g.source, g.minMember, g.created
		spec.Priority = max(spec.Priority, g.priority)
		if g.timeout > 0 {
			spec.ScheduleTimeout = g.timeout
		}
		if g.required != "" {
			spec.RequiredTopology = g.required
		}
		if g.preferred != "" {
			spec.PreferredTopology = g.preferred
		}
	default:
		// LeaderWorkerSet: no object; the members carry size and topology.
		spec.Source = gang.SourceLWS
		for _, m := range ms {
			if m.pod == nil {
				return gang.GangSpec{}, false
			}
			if ref, _ := podspec.GangOf(m.pod); ref.Source != podspec.GangLWS {
				return gang.GangSpec{}, false // a PodGroup whose object is not seen yet
			}
			spec.MinMember = max(spec.MinMember, m.lwsSize)
			if m.lwsExcl != "" {
				spec.ExclusiveTopology = m.lwsExcl
				// LWS creates an exclusive group's worker StatefulSet only
				// once the leader is scheduled (it copies the leader's
				// topology value into the workers' node selector): the
				// leader binds alone once the whole group's slots are
				// held, and the workers take the slots held for them.
				spec.Barrier = 1
			}
			if r.leaderReady[m.pod.Namespace+"/"+m.pod.Labels[api.LabelLWSName]] {
				// LeaderReady: the workers come only once the leader
				// runs and is Ready.
				spec.Barrier = 1
			}
			if spec.Created.IsZero() || m.created.Before(spec.Created) {
				spec.Created = m.created
			}
		}
		if spec.MinMember == 0 {
			spec.MinMember = len(ms)
		}
	}
	sort.Sort(sort.Reverse(sort.IntSlice(reqs)))
	// A minMember below 1 (a hostile or mistyped PodGroup) must reach
	// SetGang, whose validation turns it into an event, not index reqs.
	if reqs[0] == reqs[len(reqs)-1] || len(reqs) < spec.MinMember || spec.MinMember < 1 {
		spec.Request = reqs[0]
	} else {
		spec.MemberRequests = slices.Clone(reqs[:spec.MinMember])
	}
	return spec, true
}

// sync pushes the gang's current spec to the manager when it changed, and
// removes the gang when it can no longer be built (its object or its last
// member is gone).
func (r *gangRegistry) sync(key string) {
	r.mu.Lock()
	if r.onGone != nil && r.groups[key] == nil && r.members[key] == nil {
		defer r.onGone(key)
	}
	spec, ok := r.buildLocked(key)
	old, had := r.applied[key]
	switch {
	case ok && (!had || !reflect.DeepEqual(old, spec)):
		r.applied[key] = spec
	case !ok && had:
		delete(r.applied, key)
		r.mu.Unlock()
		r.mgr.RemoveGang(key)
		return
	default:
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	err := r.mgr.SetGang(spec)
	if err != nil {
		r.mu.Lock()
		delete(r.applied, key)
		r.mu.Unlock()
	}
	if r.onChange != nil {
		r.onChange(key, spec, err, !had)
	}
}
