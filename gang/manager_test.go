package gang

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/tessera-gpu/tessera/api"
)

func TestPermitBarrier(t *testing.T) {
	f := newFixture(t, tnode{name: "n", gpus: 4})
	spec := GangSpec{Key: "ns/g", MinMember: 3, Request: 2, ScheduleTimeout: 30 * time.Second}
	if err := f.m.SetGang(spec); err != nil {
		t.Fatal(err)
	}
	var got []PermitResult
	for i := 0; i < 3; i++ {
		p := member("ns/g", i, 2)
		pl, err := f.m.PreFilter(p)
		if err != nil {
			t.Fatal(err)
		}
		if !pl.Allows("n") || pl.Allows("other") {
			t.Errorf("placement %+v", pl)
		}
		if _, err := f.m.Reserve(p, "n"); err != nil {
			t.Fatal(err)
		}
		f.clock.Step(time.Second)
		got = append(got, f.m.Permit(p))
	}
	want := []PermitResult{
		{Status: PermitWait, Wait: 29 * time.Second, Reason: "gang ns/g: 1 of 3 members reserved"},
		{Status: PermitWait, Wait: 28 * time.Second, Reason: "gang ns/g: 2 of 3 members reserved"},
		{Status: PermitAllow, AllowUIDs: []string{"uid-ns-g-0", "uid-ns-g-1"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Permit (-want +got):\n%s", diff)
	}
	for i := 0; i < 3; i++ {
		p := member("ns/g", i, 2)
		s, err := f.m.PreBind(p, "n")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(ids(rng("n", i, 0, 1)), s); diff != "" {
			t.Errorf("PreBind %d (-want +got):\n%s", i, diff)
		}
		f.m.Bound(p)
		f.l.SetPod(PodInfo{UID: p.UID, Namespace: p.Namespace, Name: p.Name, Gang: p.Gang, Node: "n", Assignment: s})
	}
	if st, _ := f.m.Status("ns/g"); len(st.Slots) != 0 || !st.Allowed {
		t.Errorf("after bind: %+v", st)
	}
	if len(f.rejs) != 0 || len(f.mism) != 0 {
		t.Errorf("rejections %v mismatches %v", f.rejs, f.mism)
	}
}

// TestGangRejection: every way a gang fails frees the whole gang.
func TestGangRejection(t *testing.T) {
	spec := GangSpec{Key: "ns/g", MinMember: 3, Request: 8, RequiredTopology: clique, ScheduleTimeout: 30 * time.Second}
	tests := map[string]struct {
		reserve int // members that reach Reserve+Permit
		fail    func(f *fixture) []Rejection
		want    []Rejection
		// replansInFail: fail waits out the backoff and replans the gang
		// itself, so the gang holds slices again at the end and the
		// freed/backoff/replan checks below do not apply.
		replansInFail bool
	}{
		"timeout with members waiting in Permit": {
			reserve: 2,
			fail: func(f *fixture) []Rejection {
				f.clock.Step(31 * time.Second)
				return f.m.Sweep()
			},
			want: []Rejection{{Gang: "ns/g", Reason: "gang ns/g: timed out after 30s with 2 of 3 members reserved",
				PodUIDs: []string{"uid-ns-g-0", "uid-ns-g-1"}, BackoffUntil: t0.Add(41 * time.Second)}},
		},
		"plan expires when members never show up": {
			reserve: 0,
			fail: func(f *fixture) []Rejection {
				f.clock.Step(30 * time.Second)
				return f.m.Sweep()
			},
			want: []Rejection{{Gang: "ns/g", Reason: "gang ns/g: timed out after 30s with 0 of 3 members reserved",
				PodUIDs: []string{"uid-ns-g-0"}, BackoffUntil: t0.Add(40 * time.Second)}},
		},
		"permit past the deadline rejects": {
			reserve: 1,
			fail: func(f *fixture) []Rejection {
				p := member("ns/g", 1, 8)
				if _, err := f.m.PreFilter(p); err != nil {
					f.t.Fatal(err)
				}
				if _, err := f.m.Reserve(p, "c0-n0"); err != nil {
					f.t.Fatal(err)
				}
				f.clock.Step(30 * time.Second)
				if r := f.m.Permit(p); r.Status != PermitReject {
					f.t.Errorf("Permit = %+v", r)
				}
				return f.rejs
			},
			want: []Rejection{{Gang: "ns/g", Reason: "gang ns/g: timed out with 2 of 3 members reserved",
				PodUIDs: []string{"uid-ns-g-0", "uid-ns-g-1"}, BackoffUntil: t0.Add(40 * time.Second)}},
		},
		"a member failing Reserve/Permit (Unreserve) rejects the gang": {
			reserve: 2,
			fail: func(f *fixture) []Rejection {
				f.m.Unreserve(member("ns/g", 1, 8))
				f.m.Unreserve(member("ns/g", 0, 8)) // framework unreserves the rejected ones: no-op
				return f.rejs
			},
			want: []Rejection{{Gang: "ns/g", Reason: "gang ns/g: member ns/g-1 failed",
				PodUIDs: []string{"uid-ns-g-0", "uid-ns-g-1"}, BackoffUntil: t0.Add(10 * time.Second)}},
		},
		"the framework's Permit timeout (Unreserve at the deadline) reads as a timeout": {
			reserve: 2,
			fail: func(f *fixture) []Rejection {
				f.clock.Step(30 * time.Second)
				f.m.Unreserve(member("ns/g", 1, 8))
				return f.rejs
			},
			want: []Rejection{{Gang: "ns/g", Reason: "gang ns/g: timed out after 30s with 2 of 3 members reserved",
				PodUIDs: []string{"uid-ns-g-0", "uid-ns-g-1"}, BackoffUntil: t0.Add(40 * time.Second)}},
		},
		"a member refused by other plugins on its node rejects; the replan uses the node again when nothing else fits": {
			reserve: 1,
			fail: func(f *fixture) []Rejection {
				f.m.PostFilter(member("ns/g", 0, 8))
				f.clock.Step(11 * time.Second)
				// c0-n1 alone holds 2 of 3 members: avoiding c0-n0 would
				// leave the gang waiting with nothing to wake it.
				if got := f.plan(spec); len(got) != 3 {
					f.t.Errorf("replan after backoff: %v", got)
				}
				if got, _ := f.m.Status("ns/g"); !slotsOn(got.Slots, "c0-n0") {
					f.t.Errorf("replan does not use c0-n0: %v", got.Slots)
				}
				return f.rejs
			},
			want: []Rejection{{Gang: "ns/g", Reason: "gang ns/g: member ns/g-0 cannot run on planned node c0-n0",
				PodUIDs: []string{"uid-ns-g-0"}, BackoffUntil: t0.Add(10 * time.Second)}},
			replansInFail: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, cliques("c", 1, 2, 2)...)
			if got := f.plan(spec); len(got) != 3 {
				t.Fatalf("plan: %v", got)
			}
			for i := 0; i < tc.reserve; i++ {
				p := member("ns/g", i, 8)
				pl, err := f.m.PreFilter(p)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.m.Reserve(p, pl.Node); err != nil {
					t.Fatal(err)
				}
				if r := f.m.Permit(p); r.Status != PermitWait {
					t.Fatalf("Permit = %+v", r)
				}
			}
			got := tc.fail(f)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("rejections (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.want, f.rejs); diff != "" {
				t.Errorf("OnReject (-want +got):\n%s", diff)
			}
			if !tc.replansInFail {
				if h := f.holders(); len(h) != 0 {
					t.Errorf("slices still held after rejection: %v", h)
				}
				if fr := f.l.Fragmentation(); fr.FreeSlices != 32 {
					t.Errorf("free slices %d, want 32", fr.FreeSlices)
				}
				// Backoff, then the gang plans again.
				if _, err := f.m.PreFilter(member("ns/g", 0, 8)); err == nil || !strings.Contains(err.Error(), "backing off") {
					t.Errorf("PreFilter during backoff: %v", err)
				}
				f.clock.Step(time.Minute)
				if got := f.plan(spec); len(got) != 3 {
					t.Errorf("replan after backoff: %v", got)
				}
			}
			if err := checkInvariants(f.l); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCompetingGangsNeverDeadlock(t *testing.T) {
	// One clique with room for exactly one of two 3-member gangs. Members
	// arrive interleaved, as in the scheduling queue. The first gang gets
	// the whole clique, the second holds nothing, then gets it once the
	// first times out.
	f := newFixture(t, cliques("c", 1, 3, 1)...)
	a := GangSpec{Key: "ns/a", MinMember: 3, Request: 8, RequiredTopology: clique, ScheduleTimeout: time.Minute}
	b := GangSpec{Key: "ns/b", MinMember: 3, Request: 8, RequiredTopology: clique, ScheduleTimeout: time.Minute}
	for _, s := range []GangSpec{a, b} {
		if err := f.m.SetGang(s); err != nil {
			t.Fatal(err)
		}
	}
	var bErr error
	for i := 0; i < 2; i++ { // only 2 of a's members show up
		pa := member("ns/a", i, 8)
		pl, err := f.m.PreFilter(pa)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.m.Reserve(pa, pl.Node); err != nil {
			t.Fatal(err)
		}
		f.m.Permit(pa)
		_, bErr = f.m.PreFilter(member("ns/b", i, 8))
	}
	var ue *UnschedulableError
	if bErr == nil || !errorsAs(bErr, &ue) || ue.Gang != "ns/b" {
		t.Fatalf("b: %v", bErr)
	}
	if want := "gang ns/b: needs 3×8 slices in one nvidia.com/gpu.clique; best domain has 0"; bErr.Error() != want {
		t.Errorf("b reason = %q, want %q", bErr.Error(), want)
	}
	for _, h := range f.holders() {
		if strings.Contains(h, "ns-b") || strings.Contains(h, "ns/b") {
			t.Errorf("loser holds %s", h)
		}
	}
	f.clock.Step(time.Minute)
	// No SetGang in between: the cached failure of b must not survive a
	// freeing the clique.
	if _, err := f.m.PreFilter(member("ns/b", 0, 8)); err != nil {
		t.Errorf("b after a timed out: %v", err)
	}
	if len(f.rejs) != 1 || f.rejs[0].Gang != "ns/a" {
		t.Errorf("rejections: %+v", f.rejs)
	}
}

func TestReplacementStaysInDomain(t *testing.T) {
	// Two cliques; the gang runs in c0. Its member 1 dies. c1 is emptier,
	// yet the replacement goes to c0, on a GPU the gang does not use.
	nodes := cliques("c", 2, 1, 4)
	f := newFixture(t, nodes...)
	f.l.SetPod(PodInfo{UID: "other", Node: "c0-n0", Allocated: ids(rng("c0-n0", 3, 0, 7))})
	spec := GangSpec{Key: "ns/g", MinMember: 2, Request: 8, RequiredTopology: clique}
	if got := f.plan(spec); !cmp.Equal(got, []string{rng("c0-n0", 0, 0, 7), rng("c0-n0", 1, 0, 7)}) {
		t.Fatalf("plan %v", got)
	}
	f.runGang(spec)
	dead := member("ns/g", 1, 8)
	f.m.PodDeleted(dead.UID)
	repl := member("ns/g", 7, 8)
	pl, err := f.m.PreFilter(repl)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Placement{Gang: "ns/g", Node: "c0-n0", Slices: ids(rng("c0-n0", 1, 0, 7))}, pl); diff != "" {
		t.Errorf("replacement (-want +got):\n%s", diff)
	}
	if _, err := f.m.Reserve(repl, pl.Node); err != nil {
		t.Fatal(err)
	}
	if r := f.m.Permit(repl); r.Status != PermitAllow {
		t.Errorf("Permit(replacement) = %+v", r)
	}
	// A second extra member: c0 has GPU 2 left; after that, c0 is full and
	// the gang does not leak into c1.
	if pl, err := f.m.PreFilter(member("ns/g", 8, 8)); err != nil || pl.Node != "c0-n0" {
		t.Errorf("extra member: %+v %v", pl, err)
	}
	if _, err := f.m.PreFilter(member("ns/g", 9, 8)); err == nil || !strings.Contains(err.Error(), "nvidia.com/gpu.clique=c0") {
		t.Errorf("extra member beyond the domain: %v", err)
	}
}

func TestReplacementAfterSchedulerRestart(t *testing.T) {
	f := newFixture(t, cliques("c", 2, 2, 2)...)
	// Only the informer knows the running gang: one member on c1-n1 GPU 0.
	f.l.SetPod(PodInfo{UID: "m0", Namespace: "ns", Name: "g-0", Gang: "ns/g", Node: "c1-n1", Assignment: ids(rng("c1-n1", 0, 0, 3)), Allocated: ids(rng("c1-n1", 0, 0, 3))})
	if err := f.m.SetGang(GangSpec{Key: "ns/g", MinMember: 2, Request: 4, RequiredTopology: clique}); err != nil {
		t.Fatal(err)
	}
	pl, err := f.m.PreFilter(member("ns/g", 1, 4))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Placement{Gang: "ns/g", Node: "c1-n1", Slices: ids(rng("c1-n1", 1, 0, 3))}, pl); diff != "" {
		t.Errorf("replacement (-want +got):\n%s", diff)
	}
}

func TestUnreserveAfterBarrierKeepsSlot(t *testing.T) {
	f := newFixture(t, tnode{name: "n", gpus: 2})
	spec := GangSpec{Key: "ns/g", MinMember: 2, Request: 1}
	if err := f.m.SetGang(spec); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		p := member("ns/g", i, 1)
		if _, err := f.m.PreFilter(p); err != nil {
			t.Fatal(err)
		}
		if _, err := f.m.Reserve(p, "n"); err != nil {
			t.Fatal(err)
		}
		f.m.Permit(p)
	}
	// Binding member 1 fails after the barrier opened: its slot stays
	// reserved for its retry; the gang is not torn down.
	p1 := member("ns/g", 1, 1)
	f.m.Unreserve(p1)
	if len(f.rejs) != 0 {
		t.Fatalf("rejections %v", f.rejs)
	}
	if f.l.Fits("n", 8) {
		t.Error("slot freed to others")
	}
	pl, err := f.m.PreFilter(p1)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ids(rng("n", 1, 0, 0)), pl.Slices); diff != "" {
		t.Errorf("retry slot (-want +got):\n%s", diff)
	}
	if _, err := f.m.Reserve(p1, "n"); err != nil {
		t.Fatal(err)
	}
	if r := f.m.Permit(p1); r.Status != PermitAllow {
		t.Errorf("Permit = %+v", r)
	}
	if err := checkInvariants(f.l); err != nil {
		t.Fatal(err)
	}
}

func TestPreFilterReasons(t *testing.T) {
	f := newFixture(t, tnode{name: "n", gpus: 4})
	if err := f.m.SetGang(GangSpec{Key: "ns/g", MinMember: 2, Request: 2}); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		pod  Pod
		want string
	}{
		"unknown gang":    {pod: member("ns/nope", 0, 2), want: "gang ns/nope: not known yet (waiting for its PodGroup)"},
		"wrong request":   {pod: member("ns/g", 5, 3), want: "gang ns/g: pod ns/g-5 requests 3 slices; the gang's members request 2×2 slices"},
		"bad request":     {pod: member("ns/g", 5, 0), want: "prefilter: pod ns/g-5 requests 0 slices"},
		"member 0 plans":  {pod: member("ns/g", 0, 2)},
		"member 1 slot":   {pod: member("ns/g", 1, 2)},
		"extra waits":     {pod: member("ns/g", 2, 2), want: "gang ns/g: all 2 planned members are taken; pod ns/g-2 waits"},
		"single pod: any": {pod: single("s", 1)},
	}
	// The cases share one manager, so they run in this order.
	for _, name := range []string{"unknown gang", "wrong request", "bad request", "member 0 plans", "member 1 slot", "extra waits", "single pod: any"} {
		tc := tests[name]
		_, err := f.m.PreFilter(tc.pod)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("%s: PreFilter error %q, want %q", name, got, tc.want)
		}
	}
}

func TestSetGangValidation(t *testing.T) {
	tests := map[string]struct {
		spec GangSpec
		want string
	}{
		"no slash":        {spec: GangSpec{Key: "g", MinMember: 1, Request: 1}, want: "want namespace/name"},
		"zero members":    {spec: GangSpec{Key: "n/g", Request: 1}, want: "minMember must be at least 1"},
		"no request":      {spec: GangSpec{Key: "n/g", MinMember: 1}, want: "request must be at least 1"},
		"request count":   {spec: GangSpec{Key: "n/g", MinMember: 2, MemberRequests: []int{1}}, want: "1 member requests for minMember 2"},
		"negative member": {spec: GangSpec{Key: "n/g", MinMember: 1, MemberRequests: []int{-1}}, want: "member 0 requests -1"},
		"negative time":   {spec: GangSpec{Key: "n/g", MinMember: 1, Request: 1, ScheduleTimeout: -1}, want: "negative schedule timeout"},
		"ok":              {spec: GangSpec{Key: "n/g", MinMember: 1, Request: 1}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := NewManager(NewLedger(LedgerOptions{}), Options{}).SetGang(tc.spec)
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("SetGang = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestQueueOrder(t *testing.T) {
	keys := []QueueKey{
		{Priority: 0, Created: t0.Add(2 * time.Second), Pod: "d/single"},
		{Priority: 0, Created: t0.Add(time.Second), Gang: "ns/b", Pod: "ns/b-1"},
		{Priority: 0, Created: t0.Add(time.Second), Gang: "ns/a", Pod: "ns/a-1"},
		{Priority: 0, Created: t0.Add(time.Second), Gang: "ns/a", Pod: "ns/a-0"},
		{Priority: 10, Created: t0.Add(time.Hour), Gang: "ns/hi", Pod: "ns/hi-0"},
	}
	sort.SliceStable(keys, func(i, j int) bool { return Less(keys[i], keys[j]) })
	var got []string
	for _, k := range keys {
		got = append(got, k.Pod)
	}
	want := []string{"ns/hi-0", "ns/a-0", "ns/a-1", "ns/b-1", "d/single"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("order (-want +got):\n%s", diff)
	}
	m := NewManager(NewLedger(LedgerOptions{}), Options{})
	if err := m.SetGang(GangSpec{Key: "ns/g", MinMember: 1, Request: 1, Priority: 5, Created: t0}); err != nil {
		t.Fatal(err)
	}
	k := m.QueueKey(member("ns/g", 0, 1), 1, t0.Add(time.Hour))
	if diff := cmp.Diff(QueueKey{Priority: 5, Created: t0, Gang: "ns/g", Pod: "ns/g-0"}, k); diff != "" {
		t.Errorf("QueueKey (-want +got):\n%s", diff)
	}
}

var _ = api.ResourceName

// TestPlanHonoursEligibility: members whose node selector rules out the
// roomiest nodes are planned only onto nodes they may run on, and a gang
// that fits only on ineligible nodes is refused without holding anything.
func TestPlanHonoursEligibility(t *testing.T) {
	tests := map[string]struct {
		eligible  map[string]bool
		wantNodes []string
		wantErr   string
	}{
		// Best fit alone would pick the small node.
		"only the big node is eligible": {
			eligible:  map[string]bool{"big": true},
			wantNodes: []string{"big", "big"},
		},
		"all eligible: best fit": {
			eligible:  map[string]bool{"big": true, "small": true},
			wantNodes: []string{"small", "small"},
		},
		"no eligible node": {
			eligible: map[string]bool{},
			wantErr:  "gang ns/g",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, tnode{name: "big", gpus: 8}, tnode{name: "small", gpus: 2})
			if err := f.m.SetGang(GangSpec{Key: "ns/g", MinMember: 2, Request: 8, ScheduleTimeout: 30 * time.Second}); err != nil {
				t.Fatal(err)
			}
			var got []string
			for i := 0; i < 2; i++ {
				p := member("ns/g", i, 8)
				p.Eligible = func(n string) bool { return tc.eligible[n] }
				pl, err := f.m.PreFilter(p)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("PreFilter error = %v, want one naming %q", err, tc.wantErr)
					}
					if free := f.l.Fragmentation().FreeSlices; free != 80 {
						t.Errorf("a refused gang holds slices: %d of 80 free", free)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, pl.Node)
			}
			if diff := cmp.Diff(tc.wantNodes, got); diff != "" {
				t.Errorf("planned nodes (-want +got):\n%s", diff)
			}
		})
	}
}

func slotsOn(slots []Slot, node string) bool {
	for _, s := range slots {
		if s.Node == node {
			return true
		}
	}
	return false
}

// TestReplanAvoidsRefusedNode: after a member is refused on its planned
// node, the next plan goes where the gang fits without that node.
func TestReplanAvoidsRefusedNode(t *testing.T) {
	spec := GangSpec{Key: "ns/g", MinMember: 3, Request: 8, RequiredTopology: clique, ScheduleTimeout: 30 * time.Second}
	f := newFixture(t, cliques("c", 2, 2, 2)...)
	if got := f.plan(spec); len(got) != 3 {
		t.Fatalf("plan: %v", got)
	}
	st, _ := f.m.Status("ns/g")
	if !slotsOn(st.Slots, "c0-n0") {
		t.Fatalf("first plan not on c0-n0: %v", st.Slots)
	}
	var onN0 Pod
	for i := range 3 {
		p := member("ns/g", i, 8)
		pl, err := f.m.PreFilter(p)
		if err != nil {
			t.Fatal(err)
		}
		if pl.Node == "c0-n0" {
			onN0 = p
			break
		}
	}
	if onN0.UID == "" {
		t.Fatal("no member planned on c0-n0")
	}
	if r := f.m.PostFilter(onN0); r == nil {
		t.Fatal("PostFilter before the barrier did not reject the gang")
	}
	f.clock.Step(11 * time.Second)
	if got := f.plan(spec); len(got) != 3 {
		t.Fatalf("replan: %v", got)
	}
	st, _ = f.m.Status("ns/g")
	if slotsOn(st.Slots, "c0-n0") {
		t.Errorf("replan uses c0-n0 although clique c1 fits the gang: %v", st.Slots)
	}
	if err := checkInvariants(f.l); err != nil {
		t.Fatal(err)
	}
}

// TestPreemptedFreesAPlanWithoutBoundMembers: a gang preempted while only
// planned loses every planned slot at once and backs off; a running gang
// is not preempted in memory (its pods must be deleted).
func TestPreemptedFreesAPlanWithoutBoundMembers(t *testing.T) {
	f := newFixture(t, tnode{name: "n", gpus: 4, slices: 4})
	planned := GangSpec{Key: "ns/planned", MinMember: 2, Request: 4, ScheduleTimeout: time.Minute}
	if got := f.plan(planned); len(got) != 2 {
		t.Fatalf("plan = %v", got)
	}
	running := GangSpec{Key: "ns/running", MinMember: 2, Request: 4, ScheduleTimeout: time.Minute}
	f.plan(running)
	f.runGang(running)
	if f.l.Fits("n", 4) {
		t.Fatal("the node has room before the preemption")
	}
	if rej := f.m.Preempted("ns/running", "preempted by ns/hi"); rej != nil {
		t.Errorf("a running gang was preempted in memory: %+v", rej)
	}
	rej := f.m.Preempted("ns/planned", "gang ns/planned: plan preempted by ns/hi")
	if rej == nil {
		t.Fatal("the planned gang's plan was not freed")
	}
	if rej.Gang != "ns/planned" || rej.BackoffUntil.IsZero() {
		t.Errorf("rejection %+v, want gang ns/planned with a backoff", rej)
	}
	if st, _ := f.m.Status("ns/planned"); len(st.Slots) != 0 {
		t.Errorf("planned gang still holds %d slots", len(st.Slots))
	}
	if !f.l.Fits("n", 4) {
		t.Error("the freed plan's GPUs are not free")
	}
	if rej := f.m.Preempted("ns/planned", "again"); rej != nil {
		t.Errorf("a gang without a plan was preempted again: %+v", rej)
	}
	if err := checkInvariants(f.l); err != nil {
		t.Error(err)
	}
}

// TestBarrierBeforeTheWholeGang: a LeaderWorkerSet group with exclusive
// topology (Barrier 1) binds its leader alone, but only once the whole
// group's slots are held; the workers that come later take the slots held
// for them; slots nobody claims are freed a timeout after the barrier
// opened, and a late worker then goes next to the others.
func TestBarrierBeforeTheWholeGang(t *testing.T) {
	f := newFixture(t, cliques("c", 2, 1, 4)...)
	spec := GangSpec{Key: "ns/g", MinMember: 3, Barrier: 1, Request: 8, ExclusiveTopology: clique, ScheduleTimeout: 30 * time.Second}
	if err := f.m.SetGang(spec); err != nil {
		t.Fatal(err)
	}
	bind := func(p Pod) {
		t.Helper()
		pl, err := f.m.PreFilter(p)
		if err != nil {
			t.Fatalf("prefilter %s: %v", p.Name, err)
		}
		if _, err := f.m.Reserve(p, pl.Node); err != nil {
			t.Fatal(err)
		}
		if r := f.m.Permit(p); r.Status != PermitAllow {
			t.Fatalf("Permit(%s) = %+v, want allow", p.Name, r)
		}
		got, err := f.m.PreBind(p, pl.Node)
		if err != nil {
			t.Fatal(err)
		}
		f.m.Bound(p)
		f.l.SetPod(PodInfo{UID: p.UID, Namespace: p.Namespace, Name: p.Name, Gang: spec.Key, Node: pl.Node, Assignment: got})
	}
	// The leader passes the barrier alone, and the whole plan is held.
	bind(member("ns/g", 0, 8))
	st, _ := f.m.Status("ns/g")
	if len(st.Slots) != 3 || !st.Allowed || st.Bound != 1 {
		t.Fatalf("after the leader: %+v", st)
	}
	held := f.holders()
	if len(held) != 3 {
		t.Fatalf("holders after the leader: %v, want the leader and two held slots", held)
	}
	// Nobody else can take the held slots: c0-n0 has one GPU left.
	if _, err := f.l.PickAndAssume("uid-s1", "default/s1", "c0-n0", 8); err != nil {
		t.Errorf("a whole GPU on c0-n0 beside the plan: %v", err)
	}
	if _, err := f.l.PickAndAssume("uid-s2", "default/s2", "c0-n0", 8); err == nil {
		t.Error("a second whole GPU on c0-n0 was given out of the gang's held slots")
	}
	f.l.Forget("uid-s1")
	// A worker 20 s later takes its held slot, in the leader's clique.
	f.clock.Step(20 * time.Second)
	bind(member("ns/g", 1, 8))
	// The third worker never comes: 30 s after the barrier opened its slot
	// is freed (not the bound members').
	f.clock.Step(11 * time.Second)
	f.m.Sweep()
	if st, _ := f.m.Status("ns/g"); len(st.Slots) != 0 && st.Bound != len(st.Slots) {
		t.Errorf("after the timeout: %+v, want only bound slots", st)
	}
	if len(f.rejs) != 0 {
		t.Errorf("rejections %v: an open barrier never rejects the gang", f.rejs)
	}
	// It comes late: placed next to the others as a replacement.
	pl, err := f.m.PreFilter(member("ns/g", 2, 8))
	if err != nil || pl.Node != "c0-n0" {
		t.Errorf("late worker: %+v %v, want c0-n0", pl, err)
	}
	if err := checkInvariants(f.l); err != nil {
		t.Error(err)
	}
}

// TestRecreatedGangPrefersItsDomain: a gang that went away whole and comes
// back under the same key (LWS re-creating a group) is planned in the
// clique it had when that clique fits it, though best fit would pick
// another; after rememberDomainFor it is planned by best fit again.
func TestRecreatedGangPrefersItsDomain(t *testing.T) {
	for name, tc := range map[string]struct {
		away time.Duration
		want string
	}{
		"back at once":    {away: time.Second, want: "c1-n0"},
		"back much later": {away: rememberDomainFor + time.Minute, want: "c0-n0"},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, cliques("c", 2, 1, 4)...)
			// c0 is the best fit (a single pod uses one GPU of it); c1
			// is empty. Pin the first plan to c1 by filling c0 for now.
			f.l.SetPod(PodInfo{UID: "filler", Node: "c0-n0", Allocated: ids(rng("c0-n0", 0, 0, 7) + "," + rng("c0-n0", 1, 0, 7) + "," + rng("c0-n0", 2, 0, 7))})
			f.l.SetPod(PodInfo{UID: "single", Node: "c0-n0", Allocated: ids(rng("c0-n0", 3, 0, 3))})
			spec := GangSpec{Key: "ns/g", MinMember: 2, Request: 8, RequiredTopology: clique}
			if got := f.plan(spec); !strings.HasPrefix(got[0], "c1-n0") {
				t.Fatalf("first plan %v, want c1", got)
			}
			f.runGang(spec)
			// The group is deleted whole, c0 frees up, the group comes back.
			for i := range 2 {
				f.m.PodDeleted(member("ns/g", i, 8).UID)
			}
			f.m.RemoveGang("ns/g")
			f.l.RemovePod("filler")
			f.clock.Step(tc.away)
			got := f.plan(spec)
			if !strings.HasPrefix(got[0], tc.want) || !strings.HasPrefix(got[1], tc.want) {
				t.Errorf("plan after re-creation %v, want both on %s", got, tc.want)
			}
		})
	}
}
