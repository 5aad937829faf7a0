// Package podspec is the pod contract: the one place that says how Tessera
// reads a pod. The scheduler, the device plugin, kubectl tessera and the
// end-to-end helpers all call it, so they cannot disagree:
//
//   - SliceRequest: how many tessera.dev/gpu-slice a pod asks for, as the
//     Kubernetes scheduler and the kubelet count an extended resource;
//     ContainerSliceRequests: the same per container, in the kubelet's
//     allocation order;
//   - GangOf: which gang a pod belongs to and where that was declared;
//   - HeldSlices: which slices a pod holds (the device plugin's
//     tessera.dev/slices-allocated, else the scheduler's
//     tessera.dev/slice-assignment), with one rule for malformed annotations;
//     Assignment and Allocated read one annotation each;
//   - Shape and RanksThatFit: how a request of N slices is served on a node
//     cut into slicesPerGPU slices per GPU.
//
// It imports only k8s.io/api core types, apimachinery and api/: no scheduler
// framework, no client, no gang/ (gang/ may import it).
package podspec
