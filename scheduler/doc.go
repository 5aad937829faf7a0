// Package scheduler holds Tessera's kube-scheduler framework plugin: a thin
// adapter that maps every extension point one to one onto the framework-free
// core in package gang (Ledger and Manager).
//
// One plugin, Tessera, serves both halves of the job because gang.Manager
// owns both (a gang member's slices are planned with its gang; a single pod's
// slices are picked at Reserve):
//
//   - slices, for every pod that asks for tessera.dev/gpu-slice, with or
//     without a gang: PreFilter (Skip for pods without slices, so Filter and
//     Score cost nothing for them), Filter per GPU (never per node total),
//     Score (best fit: keeps whole GPUs and NVLink pairs free), Reserve picks
//     exact slice IDs, Unreserve frees them, Bind binds the pod with
//     tessera.dev/slice-assignment in the Binding (one API write; PreBind
//     patches the annotation instead where another binder comes first);
//   - gangs from scheduling.x-k8s.io PodGroups, LeaderWorkerSet groups and
//     native scheduling.k8s.io/v1beta1 PodGroups: QueueSort (priority, then
//     age, members of a gang together), PreFilter plans and reserves the whole
//     gang, members filter to their planned node, Permit is the barrier,
//     PostFilter/Unreserve/timeouts reject and free the whole gang with
//     backoff, PostBind completes it.
//
// The ledger is rebuilt from the informers (node inventories, pod
// annotations, preferring the device plugin's tessera.dev/slices-allocated),
// so a restarted scheduler never leaks slices or leaves a partial gang.
//
// # GPU health
//
// Node inventories say which GPUs are Unhealthy (the device plugin marks a
// GPU after a critical Xid or a failed probe). A controller beside the
// plugin (gpu_health.go; its decision, planHealth, in health.go) finds the
// running gangs that hold such a GPU and, per unhealthyGangAction, records a
// Warning event GPUUnhealthy and the PodGroup condition GPUHealthy=False
// (Event, the default), or also deletes every member at once so the gang's
// controller recreates it whole on healthy GPUs (EvictGang). When the GPU
// recovers, or the gang runs again on healthy GPUs, the condition turns True.
//
// # Controllers beside the plugin
//
// The plugin keeps only what the framework calls. Two controllers run beside
// it, each on a client-go workqueue with an injected clock, fed by the
// plugin's informer handlers: the PodGroup status writer
// (podgroup_status.go) and the GPU-health controller (gpu_health.go). The
// gang registry (gang_registry.go) merges PodGroup objects
// (podgroup_informers.go) and member pods into gang specs for gang.Manager.
//
// # Profile
//
// The tessera-scheduler profile enables Tessera at multiPoint and disables
// PrioritySort (Tessera is the QueueSort) and the native gang plugins
// GangScheduling, TopologyPlacementGenerator and PodGroupPodsCount: Tessera
// plans and holds every gang itself and reads native PodGroups itself. The
// scheduler runs with the GenericWorkload / TopologyAwareWorkloadScheduling
// gates on or off: with GenericWorkload on, the core's pod-group cycle
// schedules the pods of a native PodGroup together, and Tessera cooperates
// with it (podgroup_cycle.go) so that each gang still goes through Tessera's
// plan and Permit barrier once. See DefaultConfig for the full
// configuration.
package scheduler
