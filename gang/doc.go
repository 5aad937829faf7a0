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
//     Filter and Score read a per-node summary published after every change
//     (Fits, Score): O(1) to O(slicesPerGPU), lock-free, no allocation.
//   - Manager: gangs. PreFilter plans the WHOLE gang on its first member and
//     reserves the plan in the ledger at once, so two competing gangs can
//     never each hold half of a domain (the classic coscheduling deadlock).
//     Reserve/Unreserve/Permit/PreBind/Bound follow the framework's extension
//     points; a failure or timeout of one member rejects the whole gang and
//     frees every slice it held. The manager changes the ledger only in
//     transactions (Ledger.Update: Tx.Plan, Assume, Forget, Transfer), one
//     per decision; a transaction whose function fails is rolled back.
//
// Adapter guide (one call per extension point; p is a gang.Pod):
//
//	informers   Ledger.UpsertNode/RemoveNode (labels + api.ParseInventory),
//	            Ledger.SetPod(PodInfoFromAnnotations(...)) / Manager.PodDeleted,
//	            Manager.SetGang/RemoveGang (PodGroup, LWS group, native PodGroup)
//	QueueSort   Less(m.QueueKey(p, prio, created), ...)
//	PreFilter   pl, err := m.PreFilter(p); pl.Node != "" → PreFilterResult{NodeNames: {pl.Node}};
//	            *UnschedulableError → UnschedulableAndUnresolvable with err.Error()
//	Filter      gang: pl.Allows(node) (pl kept in CycleState); single: Ledger.Fits(node, p.Slices)
//	Score       Ledger.Score(node, p.Slices) (0..MaxScore; gang members have one node)
//	PostFilter  m.PostFilter(p) (the planned node was refused by another plugin)
//	Reserve     m.Reserve(p, node)      Unreserve  m.Unreserve(p)
//	Permit      m.Permit(p): Wait(r.Wait) / Allow + allow r.AllowUIDs / Reject
//	Bind        ids, err := m.PreBind(p, node) → bind with api.FormatSliceList(ids) as
//	            tessera.dev/slice-assignment in the Binding's annotations (one write);
//	            PreBind patches it instead where another binder comes first
//	PostBind    m.Bound(p)
//	background  go m.Run(ctx, time.Second); Options.OnReject rejects waiting pods;
//	            LedgerOptions.OnMismatch emits an event + metric;
//	            Ledger.Fragmentation() feeds the gauges.
//
// Lock order: Manager.mu before Ledger.mu (the manager holds its lock across
// Ledger.Update). The ledger never calls into the manager, and callbacks
// (mismatch reports, rejections) run after the locks are released, so a
// callback may call back into either type.
package gang
