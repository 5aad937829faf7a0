package gang

import (
	"fmt"
	"strings"
	"time"
)

// Source is where a gang was declared.
type Source string

const (
	SourcePodGroup Source = "PodGroup"        // scheduling.x-k8s.io/v1alpha1 PodGroup
	SourceLWS      Source = "LeaderWorkerSet" // leaderworkerset.sigs.k8s.io group
	SourceNative   Source = "Workload"        // scheduling.k8s.io/v1beta1 PodGroup (GenericWorkload)
)

// DefaultScheduleTimeout applies when a gang declares none; it matches the
// scheduler-plugins coscheduling default permit wait.
const DefaultScheduleTimeout = 60 * time.Second

// GangSpec is everything the planner needs about one gang; the adapter
// builds it from a PodGroup, a LeaderWorkerSet group or a native PodGroup.
type GangSpec struct {
	// Key is namespace/name.
	Key    string
	Source Source
	// MinMember is how many members are planned and must all be reserved
	// before any binds (unless Barrier says fewer).
	MinMember int
	// Barrier is how many members must be reserved before the Permit
	// barrier opens and they bind; 0 means MinMember, the default. The plan
	// still covers MinMember members and reserves every one of their slots
	// at once, so the whole gang's capacity is held before anything binds;
	// the members past the barrier find their slots held for them until
	// ScheduleTimeout after it opened (then the unclaimed slots are freed,
	// and a late member is placed next to the others as a replacement).
	// LeaderWorkerSet groups whose workers LWS creates only once the leader
	// is scheduled (exclusive topology) use 1: a barrier at the whole group
	// would wait for workers that cannot exist yet.
	Barrier int
	// Request is the slices every member asks for (the common case).
	Request int
	// MemberRequests, when set, overrides Request per member; its length
	// must be MinMember. Members of equal request are interchangeable.
	MemberRequests []int
	// RequiredTopology is a node label key: the whole gang must fit in one
	// domain of it; nodes without the label are not eligible.
	RequiredTopology string
	// PreferredTopology is a node label key used as score: pack into one
	// domain of it, else span as few as possible.
	PreferredTopology string
	// ExclusiveTopology is a node label key (LWS exclusive-topology): the
	// gang must fit in one domain of it that holds no other gang, and no
	// other gang is placed there while this one holds it.
	ExclusiveTopology string
	// ScheduleTimeout bounds how long a plan waits for its members;
	// DefaultScheduleTimeout when zero.
	ScheduleTimeout time.Duration
	Priority        int32
	Created         time.Time
}

// Validate checks the spec; the error names the field.
func (s *GangSpec) Validate() error {
	if s.Key == "" || strings.Count(s.Key, "/") != 1 || strings.HasPrefix(s.Key, "/") || strings.HasSuffix(s.Key, "/") {
		return fmt.Errorf("gang key %q: want namespace/name", s.Key)
	}
	if s.MinMember < 1 {
		return fmt.Errorf("gang %s: minMember must be at least 1, got %d", s.Key, s.MinMember)
	}
	if s.MinMember > 4096 {
		return fmt.Errorf("gang %s: minMember %d is above the supported 4096", s.Key, s.MinMember)
	}
	if s.MemberRequests != nil {
		if len(s.MemberRequests) != s.MinMember {
			return fmt.Errorf("gang %s: %d member requests for minMember %d", s.Key, len(s.MemberRequests), s.MinMember)
		}
		for i, r := range s.MemberRequests {
			if r < 1 {
				return fmt.Errorf("gang %s: member %d requests %d slices, want at least 1", s.Key, i, r)
			}
		}
	} else if s.Request < 1 {
		return fmt.Errorf("gang %s: request must be at least 1 slice, got %d", s.Key, s.Request)
	}
	if s.Barrier < 0 || s.Barrier > s.MinMember {
		return fmt.Errorf("gang %s: barrier %d is outside 0..minMember (%d)", s.Key, s.Barrier, s.MinMember)
	}
	if s.ScheduleTimeout < 0 {
		return fmt.Errorf("gang %s: negative schedule timeout %s", s.Key, s.ScheduleTimeout)
	}
	return nil
}

// requests returns every member's request.
func (s *GangSpec) requests() []int {
	if s.MemberRequests != nil {
		return append([]int(nil), s.MemberRequests...)
	}
	out := make([]int, s.MinMember)
	for i := range out {
		out[i] = s.Request
	}
	return out
}

// requiredKeys are the label keys whose one domain the gang must fit in.
func (s *GangSpec) requiredKeys() []string {
	var keys []string
	if s.RequiredTopology != "" {
		keys = append(keys, s.RequiredTopology)
	}
	if s.ExclusiveTopology != "" && s.ExclusiveTopology != s.RequiredTopology {
		keys = append(keys, s.ExclusiveTopology)
	}
	return keys
}

// barrier is how many reserved members open the Permit barrier.
func (s *GangSpec) barrier() int {
	if s.Barrier > 0 {
		return s.Barrier
	}
	return s.MinMember
}

func (s *GangSpec) timeout() time.Duration {
	if s.ScheduleTimeout > 0 {
		return s.ScheduleTimeout
	}
	return DefaultScheduleTimeout
}

// shapeString renders the request for reasons: "4×2 slices" or
// "3 members (8+2+2 slices)".
func (s *GangSpec) shapeString() string {
	reqs := s.requests()
	same := true
	for _, r := range reqs {
		same = same && r == reqs[0]
	}
	if same {
		return fmt.Sprintf("%d×%d slices", len(reqs), reqs[0])
	}
	parts := make([]string, len(reqs))
	for i, r := range reqs {
		parts[i] = fmt.Sprint(r)
	}
	return fmt.Sprintf("%d members (%s slices)", len(reqs), strings.Join(parts, "+"))
}

// QueueKey orders pods in the scheduling queue (see Less).
type QueueKey struct {
	Priority int32
	// Created is the gang's creation time for gang members (so a gang's
	// members stay together and older gangs go first), the pod's otherwise.
	Created time.Time
	// Gang is the gang key, "" for single pods.
	Gang string
	// Pod is namespace/name, the final tie-breaker.
	Pod string
}

// Less is the QueueSort order: higher priority first, then older, then by
// gang key so members of one gang are popped back to back (their plan is
// already made and reserved), then by pod name. It is a strict weak order.
func Less(a, b QueueKey) bool {
	if a.Priority != b.Priority {
		return a.Priority > b.Priority
	}
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	if a.Gang != b.Gang {
		return a.Gang < b.Gang
	}
	return a.Pod < b.Pod
}
