package api

const (
	// ResourceName is the extended resource the device plugin advertises; its
	// quantity is a count of GPU slices.
	ResourceName = "tessera.dev/gpu-slice"

	// SchedulerName is the scheduler profile workloads opt into.
	SchedulerName = "tessera-scheduler"

	// AnnotationInventory is set on a Node by its device plugin: versioned JSON
	// describing every GPU (see Inventory).
	AnnotationInventory = "tessera.dev/gpu-inventory"
	// AnnotationSliceAssignment is set on a Pod by the scheduler when it
	// binds it (in the Binding, so it lands with spec.nodeName; at PreBind
	// where another binder runs first): the exact slice IDs the pod must
	// get, comma separated.
	AnnotationSliceAssignment = "tessera.dev/slice-assignment"
	// AnnotationSlicesAllocated is set on a Pod by the device plugin after it
	// reconciled with the kubelet: the slice IDs the container really holds.
	AnnotationSlicesAllocated = "tessera.dev/slices-allocated"

	// AnnotationTopologyRequired and AnnotationTopologyPreferred are set on a
	// PodGroup: node label keys whose domains the whole gang must (or should)
	// fit into.
	AnnotationTopologyRequired  = "tessera.dev/topology-required"
	AnnotationTopologyPreferred = "tessera.dev/topology-preferred"

	// Node labels the device plugin keeps current for humans and selectors.
	LabelGPUProduct   = "tessera.dev/gpu.product"
	LabelGPUCount     = "tessera.dev/gpu.count"
	LabelSlicesPerGPU = "tessera.dev/slices-per-gpu"

	// Gang sources.
	LabelPodGroup         = "scheduling.x-k8s.io/pod-group"
	LabelLWSGroupKey      = "leaderworkerset.sigs.k8s.io/group-key"
	LabelLWSName          = "leaderworkerset.sigs.k8s.io/name"
	AnnotationLWSSize     = "leaderworkerset.sigs.k8s.io/size"
	AnnotationLWSExclTopo = "leaderworkerset.sigs.k8s.io/exclusive-topology"

	// Topology levels Tessera knows out of the box.
	LabelClique = "nvidia.com/gpu.clique"
	LabelRack   = "topology.kubernetes.io/rack"
	LabelZone   = "topology.kubernetes.io/zone"

	// DRADriverName is the node agent's DRA driver (deviceplugin/dra), the
	// domain of its device attributes and capacities.
	DRADriverName = "gpu.tessera.dev"

	// Environment the device plugin hands to containers at Allocate.
	EnvVisibleDevices = "NVIDIA_VISIBLE_DEVICES"
	EnvSlices         = "TESSERA_SLICES"
	EnvMemoryLimitMiB = "TESSERA_MEMORY_LIMIT_MIB"
)

// SharingStrategy says how slices of one GPU share it.
type SharingStrategy string

const (
	// StrategyTimeSlice shares a GPU by time slicing, without isolation.
	StrategyTimeSlice SharingStrategy = "timeslice"
	// StrategyMPS shares a GPU through CUDA MPS with memory and thread limits.
	StrategyMPS SharingStrategy = "mps"
	// StrategyMIG makes each slice a MIG device: hardware isolation.
	StrategyMIG SharingStrategy = "mig"
)

// Valid reports whether s is one of the known strategies.
func (s SharingStrategy) Valid() bool {
	switch s {
	case StrategyTimeSlice, StrategyMPS, StrategyMIG:
		return true
	}
	return false
}
