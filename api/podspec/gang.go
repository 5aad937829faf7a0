package podspec

import (
	"strconv"

	v1 "k8s.io/api/core/v1"

	"github.com/tessera-gpu/tessera/api"
)

// GangSource is where a pod's gang was declared. The values are those of
// gang.Source (gang/spec.go), so a GangSource converts to it with
// gang.Source(s); a test keeps the two in step.
type GangSource string

const (
	// GangPodGroup: label scheduling.x-k8s.io/pod-group naming a
	// scheduling.x-k8s.io/v1alpha1 PodGroup.
	GangPodGroup GangSource = "PodGroup"
	// GangNative: spec.schedulingGroup.podGroupName naming a
	// scheduling.k8s.io/v1beta1 PodGroup.
	GangNative GangSource = "Workload"
	// GangLWS: label leaderworkerset.sigs.k8s.io/group-key.
	GangLWS GangSource = "LeaderWorkerSet"
)

// GangRef says which gang a pod belongs to and where that was declared.
type GangRef struct {
	// Key is namespace/name, the gang's identity everywhere in Tessera.
	Key string
	// Name is the group's name within the namespace: the PodGroup's name,
	// or the LeaderWorkerSet group key.
	Name   string
	Source GangSource
}

// GangOf returns the pod's gang, if any. When a pod names several, the
// first of these wins:
//
//  1. label scheduling.x-k8s.io/pod-group (a scheduling-plugins PodGroup);
//  2. spec.schedulingGroup.podGroupName (a native PodGroup);
//  3. label leaderworkerset.sigs.k8s.io/group-key (a LeaderWorkerSet group).
//
// An empty value counts as absent. Whether a native PodGroup is a gang at
// all (its policy) is a property of the PodGroup object, not of the pod: the
// caller decides that.
func GangOf(pod *v1.Pod) (GangRef, bool) {
	if name := pod.Labels[api.LabelPodGroup]; name != "" {
		return GangRef{Key: pod.Namespace + "/" + name, Name: name, Source: GangPodGroup}, true
	}
	if name := nativeGroup(pod); name != "" {
		return GangRef{Key: pod.Namespace + "/" + name, Name: name, Source: GangNative}, true
	}
	if key := pod.Labels[api.LabelLWSGroupKey]; key != "" {
		return GangRef{Key: pod.Namespace + "/" + key, Name: key, Source: GangLWS}, true
	}
	return GangRef{}, false
}

// InGang reports whether GangOf finds a gang, without building its key (for
// hot paths such as queue sorting).
func InGang(pod *v1.Pod) bool {
	return pod.Labels[api.LabelPodGroup] != "" || nativeGroup(pod) != "" || pod.Labels[api.LabelLWSGroupKey] != ""
}

func nativeGroup(pod *v1.Pod) string {
	if sg := pod.Spec.SchedulingGroup; sg != nil && sg.PodGroupName != nil {
		return *sg.PodGroupName
	}
	return ""
}

// LWSSize is the pod's leaderworkerset.sigs.k8s.io/size annotation (its
// LeaderWorkerSet group's size), 0 when absent, not a decimal integer, or
// below 1.
func LWSSize(pod *v1.Pod) int {
	n, err := strconv.Atoi(pod.Annotations[api.AnnotationLWSSize])
	if err != nil || n < 1 {
		return 0
	}
	return n
}
