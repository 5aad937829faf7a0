package api

import (
	"fmt"
	"strconv"
	"strings"
)

// sliceSep separates the GPU UUID from the slice index in a slice ID. It is
// the same separator NVIDIA's device plugin uses for time-sliced replicas, so
// admins reading kubelet checkpoints see a familiar shape.
const sliceSep = "::"

// SliceID names one slice of one GPU: "<gpu-uuid>::<k>".
type SliceID struct {
	GPU   string
	Index int
}

// String formats the ID as the device ID the kubelet sees.
func (s SliceID) String() string {
	return s.GPU + sliceSep + strconv.Itoa(s.Index)
}

// ParseSliceID parses "<gpu-uuid>::<k>".
func ParseSliceID(s string) (SliceID, error) {
	gpu, idx, ok := strings.Cut(s, sliceSep)
	if !ok {
		return SliceID{}, fmt.Errorf("slice ID %q: want <gpu-uuid>::<index>", s)
	}
	if gpu == "" || strings.ContainsAny(gpu, ", \t\n") {
		return SliceID{}, fmt.Errorf("slice ID %q: invalid GPU UUID %q", s, gpu)
	}
	k, err := strconv.Atoi(idx)
	if err != nil || k < 0 || strconv.Itoa(k) != idx {
		return SliceID{}, fmt.Errorf("slice ID %q: index %q is not a non-negative integer", s, idx)
	}
	return SliceID{GPU: gpu, Index: k}, nil
}

// ParseSliceList parses a comma-separated list of slice IDs, as found in the
// slice-assignment and slices-allocated annotations. Duplicates are an error:
// a pod can never hold one slice twice, so a duplicate means corruption.
func ParseSliceList(s string) ([]SliceID, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("empty slice list")
	}
	parts := strings.Split(s, ",")
	out := make([]SliceID, 0, len(parts))
	seen := make(map[SliceID]struct{}, len(parts))
	for _, p := range parts {
		id, err := ParseSliceID(strings.TrimSpace(p))
		if err != nil {
			return nil, err
		}
		if _, dup := seen[id]; dup {
			return nil, fmt.Errorf("slice %s listed twice", id)
		}
		seen[id] = struct{}{}
		out = append(out, id)
	}
	return out, nil
}

// FormatSliceList is the inverse of ParseSliceList.
func FormatSliceList(ids []SliceID) string {
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(id.String())
	}
	return b.String()
}

// GPUsOf returns the distinct GPU UUIDs of ids in first-seen order.
func GPUsOf(ids []SliceID) []string {
	var out []string
	seen := map[string]struct{}{}
	for _, id := range ids {
		if _, ok := seen[id.GPU]; ok {
			continue
		}
		seen[id.GPU] = struct{}{}
		out = append(out, id.GPU)
	}
	return out
}
