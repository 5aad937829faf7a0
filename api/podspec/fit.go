package podspec

import "fmt"

// Shape says how a request of request slices is served on a node cut into
// slicesPerGPU slices per GPU (docs/design.md, Slices): wholeGPUs = 0 means
// all of it from ONE GPU (request ≤ slicesPerGPU); wholeGPUs = k > 0 means
// k wholly free GPUs (request = k × slicesPerGPU). A request below 1, or
// above slicesPerGPU and not a whole multiple of it, cannot be served on
// that node: a rank never straddles two GPUs partially.
//
// The scheduler's ledger (gang/place.go) and kubectl tessera both call it.
func Shape(request, slicesPerGPU int) (wholeGPUs int, err error) {
	switch {
	case slicesPerGPU < 1:
		return 0, fmt.Errorf("%d slices per GPU: must be at least 1", slicesPerGPU)
	case request <= 0:
		return 0, fmt.Errorf("request of %d slices: must be at least 1", request)
	case request <= slicesPerGPU:
		return 0, nil
	case request%slicesPerGPU != 0:
		return 0, fmt.Errorf("request of %d slices: above %d slices per GPU it must be a whole multiple of %d", request, slicesPerGPU, slicesPerGPU)
	}
	return request / slicesPerGPU, nil
}

// GPUFree is one GPU as the fit rule sees it.
type GPUFree struct {
	// Slices is how many slices the GPU has: slicesPerGPU, or fewer for a
	// smaller GPU on a node sliced by memory.
	Slices int
	// Free counts its slices nobody holds.
	Free    int
	Healthy bool
}

// RanksThatFit counts how many ranks of request slices fit on a node right
// now, each on its own GPU(s), as the scheduler places the ranks of a gang:
// up to slicesPerGPU, healthy GPUs with at least request free slices; above
// it, request/slicesPerGPU wholly free, healthy, full-size GPUs per rank (a
// smaller GPU never serves a whole-GPU rank). 0 when Shape refuses the
// request.
func RanksThatFit(request, slicesPerGPU int, gpus []GPUFree) int {
	k, err := Shape(request, slicesPerGPU)
	if err != nil {
		return 0
	}
	n := 0
	for _, g := range gpus {
		switch {
		case !g.Healthy:
		case k == 0 && g.Free >= request:
			n++
		case k > 0 && g.Slices == slicesPerGPU && g.Free == g.Slices:
			n++
		}
	}
	if k > 0 {
		return n / k
	}
	return n
}
