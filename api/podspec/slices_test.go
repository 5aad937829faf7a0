package podspec

import (
	"errors"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tessera-gpu/tessera/api"
)

func TestSliceAnnotations(t *testing.T) {
	tests := map[string]struct {
		annotations             map[string]string
		wantAssigned, wantAlloc []api.SliceID
		wantErrOn               []string
	}{
		"none": {},
		"both good": {
			annotations:  map[string]string{api.AnnotationSliceAssignment: "g::0", api.AnnotationSlicesAllocated: "g::1"},
			wantAssigned: []api.SliceID{{GPU: "g", Index: 0}}, wantAlloc: []api.SliceID{{GPU: "g", Index: 1}},
		},
		"malformed allocation is absent and named": {
			annotations:  map[string]string{api.AnnotationSliceAssignment: "g::0", api.AnnotationSlicesAllocated: "garbage"},
			wantAssigned: []api.SliceID{{GPU: "g", Index: 0}}, wantErrOn: []string{api.AnnotationSlicesAllocated},
		},
		"both malformed": {
			annotations: map[string]string{api.AnnotationSliceAssignment: "", api.AnnotationSlicesAllocated: "x"},
			wantErrOn:   []string{api.AnnotationSliceAssignment, api.AnnotationSlicesAllocated},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			assigned, alloc, err := SliceAnnotations(tc.annotations)
			if diff := cmp.Diff(tc.wantAssigned, assigned, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("assignment (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantAlloc, alloc, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("allocated (-want +got):\n%s", diff)
			}
			var got []string
			for _, e := range unwrapAll(err) {
				var ae *AnnotationError
				if errors.As(e, &ae) {
					got = append(got, ae.Annotation)
				}
			}
			slices.Sort(got)
			if diff := cmp.Diff(tc.wantErrOn, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("errors on (-want +got):\n%s", diff)
			}
		})
	}
}

// unwrapAll flattens an errors.Join.
func unwrapAll(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
