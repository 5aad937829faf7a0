package podspec

import (
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"

	"github.com/tessera-gpu/tessera/api"
)

// SliceSource names the annotation HeldSlices read; its value is the
// annotation's name, so it can be shown as is.
type SliceSource string

const (
	// HeldNone: the pod carries no readable slice annotation.
	HeldNone SliceSource = ""
	// HeldAllocated: tessera.dev/slices-allocated, written by the device
	// plugin from the kubelet's PodResources: the truth.
	HeldAllocated SliceSource = api.AnnotationSlicesAllocated
	// HeldAssignment: tessera.dev/slice-assignment, written by the scheduler
	// at bind: what the pod should get.
	HeldAssignment SliceSource = api.AnnotationSliceAssignment
)

// AnnotationError is a slice annotation that does not parse. It names the
// annotation; Err is api.ParseSliceList's error.
type AnnotationError struct {
	Annotation string
	Value      string
	Err        error
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s: %v", e.Annotation, e.Err)
}

func (e *AnnotationError) Unwrap() error { return e.Err }

// Assignment reads tessera.dev/slice-assignment. present says whether the
// annotation exists at all; when it exists but does not parse (an empty
// value included: api.ParseSliceList refuses it), ids is nil and err an
// *AnnotationError.
func Assignment(pod *v1.Pod) (ids []api.SliceID, present bool, err error) {
	return sliceAnnotation(pod, api.AnnotationSliceAssignment)
}

// Allocated reads tessera.dev/slices-allocated, as Assignment does.
func Allocated(pod *v1.Pod) (ids []api.SliceID, present bool, err error) {
	return sliceAnnotation(pod, api.AnnotationSlicesAllocated)
}

func sliceAnnotation(pod *v1.Pod, name string) ([]api.SliceID, bool, error) {
	return sliceAnnotationOf(pod.Annotations, name)
}

// SliceAnnotations reads both slice annotations from an annotation map, for
// callers that hold no *v1.Pod (the scheduler's ledger): each malformed one
// is absent (nil) and its *AnnotationError is returned, joined.
func SliceAnnotations(annotations map[string]string) (assignment, allocated []api.SliceID, err error) {
	assignment, _, errAssign := sliceAnnotationOf(annotations, api.AnnotationSliceAssignment)
	allocated, _, errAlloc := sliceAnnotationOf(annotations, api.AnnotationSlicesAllocated)
	return assignment, allocated, errors.Join(errAssign, errAlloc)
}

func sliceAnnotationOf(annotations map[string]string, name string) ([]api.SliceID, bool, error) {
	v, ok := annotations[name]
	if !ok {
		return nil, false, nil
	}
	ids, err := api.ParseSliceList(v)
	if err != nil {
		return nil, true, &AnnotationError{Annotation: name, Value: v, Err: err}
	}
	return ids, true, nil
}

// HeldSlices returns the slices the pod holds and which annotation said so:
// tessera.dev/slices-allocated when it parses (the device plugin's truth),
// else tessera.dev/slice-assignment when it parses, else none.
//
// The one rule for parse errors (the scheduler's ledger reads the same
// through SliceAnnotations): a malformed annotation, an empty value included,
// is treated as absent, and its *AnnotationError is returned beside
// whatever was read, so the caller can log it or raise an event. So a
// malformed allocation with a good assignment returns the assignment,
// HeldAssignment and the allocation's error; two malformed annotations
// return nil, HeldNone and both errors (errors.Join). A caller that needs
// clean annotations treats any error as failure; one that shows or acts on
// what the pod holds uses ids and reports the error.
func HeldSlices(pod *v1.Pod) (ids []api.SliceID, from SliceSource, err error) {
	alloc, _, errAlloc := Allocated(pod)
	if errAlloc == nil && alloc != nil {
		return alloc, HeldAllocated, nil
	}
	assign, _, errAssign := Assignment(pod)
	if errAssign == nil && assign != nil {
		return assign, HeldAssignment, errAlloc
	}
	return nil, HeldNone, errors.Join(errAlloc, errAssign)
}
