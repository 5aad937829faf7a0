package scheduler

import (
	"maps"
	"slices"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
)

// What the scheduler does when a GPU that a running gang holds turns
// Unhealthy (an Xid or a failed probe reported by the device plugin in the
// node's inventory).
const (
	// UnhealthyGangEvent records a Warning event on the gang and sets the
	// PodGroup condition GPUHealthy=False; the gang keeps running (a
	// tensor-parallel group usually fails by itself, and its owner decides).
	UnhealthyGangEvent = "Event"
	// UnhealthyGangEvict does the same and then deletes every member pod of
	// the gang at once, so its controller (StatefulSet, LeaderWorkerSet,
	// Job) recreates the whole group; the new plan avoids the Unhealthy GPU.
	// Pods without a controller are gone for good, so this is opt-in.
	UnhealthyGangEvict = "EvictGang"

	// ConditionGPUHealthy is the PodGroup condition type the scheduler sets.
	ConditionGPUHealthy = "GPUHealthy"
)

// healthAction is one decision of planHealth for one gang.
type healthAction struct {
	Gang string
	// Unhealthy is true when the gang just became (or stays, with a changed
	// set of GPUs) affected, false when it recovered.
	Unhealthy bool
	// GPUs are "node/uuid" of the Unhealthy GPUs the gang holds, sorted.
	GPUs []string
	// Shared are "node/uuid" of GPUs that two or more members hold, sorted:
	// the kubelet handed ranks one GPU against the plan (a pod bound by
	// another scheduler or by hand took a rank's slices). The gang gets the
	// same action as for an Unhealthy GPU.
	Shared []string
	// Pods are namespace/name of the members on those GPUs, sorted.
	Pods []string
	// Evict lists every member (namespace/name) to delete.
	Evict []string
}

// healthReport is what planHealth reported last for one gang.
type healthReport struct {
	// GPUs is the sorted, comma-joined "node/uuid" set reported Unhealthy,
	// then ";shared:" and the set shared by ranks when there is one.
	GPUs string
	// Evicted are the UIDs of the members EvictGang deleted, sorted. While
	// any of them is still a member (the API server and the informer remove
	// them one by one), the gang is being evicted, not recovered: a sweep
	// that sees the member on the Unhealthy GPU gone first and the others
	// still there must not report the gang Healthy again.
	Evicted []types.UID
}

// planHealth is the whole decision, free of clients so it can be tested as a
// table: given each gang's member pods, the Unhealthy GPUs per node and what
// was reported last time, it returns what to do now and the new report
// state. A gang is reported once per distinct set of Unhealthy GPUs, and
// once more when it holds none again.
//
// A reported gang with no members left (evicted, or between a controller's
// delete and create) keeps its report while its object exists, so the
// condition stays False until the gang runs again on healthy GPUs; so does
// a gang while any member it evicted is still there; a gang whose object
// and members are gone is forgotten without a word.
func planHealth(members map[string][]*v1.Pod, bad map[string]map[string]bool, prev map[string]healthReport, action string, exists func(gang string) bool) ([]healthAction, map[string]healthReport) {
	next := map[string]healthReport{}
	var out []healthAction
	for _, key := range slices.Sorted(maps.Keys(members)) {
		gpus, pods := map[string]bool{}, map[string]bool{}
		holders := map[string][]string{} // node/uuid -> members holding slices of it
		var all []string
		var uids []types.UID
		for _, p := range members[key] {
			all = append(all, p.Namespace+"/"+p.Name)
			uids = append(uids, p.UID)
			if p.Spec.NodeName == "" {
				continue
			}
			ids, _, _ := podspec.HeldSlices(p) // a malformed annotation is reported where the ledger reads it
			for _, uuid := range api.GPUsOf(ids) {
				g := p.Spec.NodeName + "/" + uuid
				holders[g] = append(holders[g], p.Namespace+"/"+p.Name)
				if bad[p.Spec.NodeName][uuid] {
					gpus[g] = true
					pods[p.Namespace+"/"+p.Name] = true
				}
			}
		}
		var shared []string
		for g, hs := range holders {
			if len(hs) > 1 {
				shared = append(shared, g)
				for _, h := range hs {
					pods[h] = true
				}
			}
		}
		if len(gpus) == 0 && len(shared) == 0 {
			continue
		}
		slices.Sort(shared)
		a := healthAction{Gang: key, Unhealthy: true, GPUs: slices.Sorted(maps.Keys(gpus)), Shared: shared, Pods: slices.Sorted(maps.Keys(pods))}
		sig := strings.Join(a.GPUs, ",")
		if len(shared) > 0 {
			sig += ";shared:" + strings.Join(shared, ",")
		}
		if last, ok := prev[key]; ok && last.GPUs == sig {
			next[key] = last
			continue
		}
		report := healthReport{GPUs: sig}
		if action == UnhealthyGangEvict {
			sort.Strings(all)
			a.Evict = all
			slices.Sort(uids)
			report.Evicted = uids
		}
		next[key] = report
		out = append(out, a)
	}
	for _, key := range slices.Sorted(maps.Keys(prev)) {
		if _, still := next[key]; still {
			continue
		}
		if len(members[key]) == 0 {
			if exists(key) {
				next[key] = prev[key]
			}
			continue
		}
		if evicting(members[key], prev[key].Evicted) {
			next[key] = prev[key]
			continue
		}
		out = append(out, healthAction{Gang: key})
	}
	return out, next
}

// evicting reports whether any of pods is one of the evicted UIDs (sorted).
func evicting(pods []*v1.Pod, evicted []types.UID) bool {
	for _, p := range pods {
		if _, found := slices.BinarySearch(evicted, p.UID); found {
			return true
		}
	}
	return false
}

// badGPUs returns the Unhealthy GPUs of an inventory; nil when none.
func badGPUs(inv *api.Inventory) map[string]bool {
	var out map[string]bool
	for _, g := range inv.GPUs {
		if !g.Healthy {
			if out == nil {
				out = map[string]bool{}
			}
			out[g.UUID] = true
		}
	}
	return out
}
