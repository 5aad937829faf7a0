// Package gang is the framework-free core of the Tessera scheduler: the slice
// ledger, single-pod slice placement, whole-gang planning and the gang
// lifecycle (plan → reserve → permit barrier → bind, or reject as a whole).
//
// It deliberately imports nothing from k8s.io/kubernetes/pkg/scheduler so that
// every decision can be tested as a plain scenario table and benchmarked
// without a cluster. The kube-scheduler plugins in scheduler/ are thin
// adapters over two types:
//
//   - Ledger: per node and per GPU, which slice is free, assumed (reserved in
//     the scheduler's memory), assigned (tessera.dev/slice-assignment) or
//     allocated (tessera.dev/slices-allocated, the device plugin's truth).
//     Informers feed it with UpsertNode/RemoveNode and SetPod/RemovePod.
//     Filter and Score read precomputed per-node summaries (Fits, Score), so
//     they cost O(slicesPerGPU) and allocate nothing.
//   - Manager: gangs. PreFilter plans the WHOLE gang on its first member and
//     reserves the plan in the ledger at once, so two competing gangs can
//     never each hold half of a domain (the classic coscheduling deadlock).
//     Reserve/Unreserve/Permit/PreBind/Bound follow the framework's extension
//     points; a failure or timeout of one member rejects the whole gang and
//     frees every slice it held.
//
// Lock order: Manager.mu before Ledger.mu. The ledger never calls into the
// manager, and callbacks (mismatch reports, rejections) run after the locks
// are released, so a callback may call back into either type.
package gang
