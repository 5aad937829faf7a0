// Package viz is the logic of kubectl-tessera: it reads what the cluster says
// about Tessera (node inventories, pod slice annotations, gangs, the
// scheduler's events) with one List per resource, folds it into a Snapshot,
// and renders that as a terminal map, tables, explanations, JSON/YAML or an
// SVG picture.
//
// The pieces are separate so that each can be tested on fixed data:
//
//   - Collect lists the objects (Input); Build turns an Input into a Snapshot
//     with no API calls, so every view is a pure function of fixed objects;
//   - RenderNodes, RenderGangs, Explain(...).Render and RenderSVG draw it;
//   - NewCommand wires them into the kubectl plugin's cobra commands.
//
// The slice truth follows the scheduler's ledger: the device plugin's
// tessera.dev/slices-allocated wins over the scheduler's
// tessera.dev/slice-assignment; gang membership follows the scheduler's
// precedence (scheduling.x-k8s.io/pod-group label, then the native
// spec.schedulingGroup, then the LeaderWorkerSet group key).
package viz
