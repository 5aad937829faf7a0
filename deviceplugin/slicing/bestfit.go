package slicing

import (
	"sort"

	"github.com/tessera-gpu/tessera/api"
)

// pool is the free slices of a request, per GPU position, sorted by k.
type pool struct {
	l     *Layout
	free  [][]int
	must  [][]int
	other []string // ids the layout does not know (kept as a last resort)
}

func newPool(l *Layout, available, mustInclude []string) *pool {
	p := &pool{l: l, free: make([][]int, len(l.GPUs)), must: make([][]int, len(l.GPUs))}
	seen := make(map[string]struct{}, len(available)+len(mustInclude))
	add := func(id string, must bool) {
		if _, dup := seen[id]; dup {
			if must {
				// Already counted as free; mark it must as well.
				if s, i, err := l.Slice(id); err == nil {
					p.must[i] = appendUnique(p.must[i], s.Index)
				}
			}
			return
		}
		seen[id] = struct{}{}
		s, i, err := l.Slice(id)
		if err != nil {
			if !must {
				p.other = append(p.other, id)
			}
			return
		}
		p.free[i] = append(p.free[i], s.Index)
		if must {
			p.must[i] = appendUnique(p.must[i], s.Index)
		}
	}
	for _, id := range mustInclude {
		add(id, true)
	}
	for _, id := range available {
		add(id, false)
	}
	for i := range p.free {
		sort.Ints(p.free[i])
		sort.Ints(p.must[i])
	}
	return p
}

func appendUnique(s []int, v int) []int {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

func (p *pool) whole(i int) bool {
	return len(p.free[i]) == p.l.GPUs[i].Slices && p.l.GPUs[i].Slices > 0
}

// take returns n slice ids of GPU i: its must slices first, then lowest k.
func (p *pool) take(i, n int) []string {
	out := make([]string, 0, n)
	used := map[int]bool{}
	for _, k := range p.must[i] {
		if len(out) == n {
			break
		}
		out = append(out, api.SliceID{GPU: p.l.GPUs[i].UUID, Index: k}.String())
		used[k] = true
	}
	for _, k := range p.free[i] {
		if len(out) == n {
			break
		}
		if !used[k] {
			out = append(out, api.SliceID{GPU: p.l.GPUs[i].UUID, Index: k}.String())
		}
	}
	return out
}

// BestFit picks size slices from available (plus mustInclude, always part of
// the answer) for a pod without a scheduler assignment:
//
//  1. size fits one GPU: the GPU that is left with the fewest free slices
//     (packing), preferring GPUs already in use and GPUs whose NVLink peers
//     are in use, so whole GPUs and whole NVLink pairs stay free;
//  2. size is a whole number of GPUs: that many wholly free GPUs with the
//     most NVLink links among them, then the fewest NUMA nodes;
//  3. otherwise (fragmentation): the fewest GPUs, most free first, NVLink
//     neighbours of those already taken first.
//
// The answer has exactly size ids whenever available holds that many.
func BestFit(l *Layout, available, mustInclude []string, size int) []string {
	if size <= 0 {
		return nil
	}
	p := newPool(l, available, mustInclude)
	var mustGPUs []int
	for i := range p.must {
		if len(p.must[i]) > 0 {
			mustGPUs = append(mustGPUs, i)
		}
	}
	if ids := p.oneGPU(size, mustGPUs); ids != nil {
		return ids
	}
	if ids := p.wholeGPUs(size, mustGPUs); ids != nil {
		return ids
	}
	return p.spread(size, mustGPUs)
}

func (p *pool) oneGPU(size int, mustGPUs []int) []string {
	if len(mustGPUs) > 1 {
		return nil
	}
	best, bestKey := -1, [4]int{}
	for i, g := range p.l.GPUs {
		if len(p.free[i]) < size || size > g.Slices {
			continue
		}
		if len(mustGPUs) == 1 && mustGPUs[0] != i {
			continue
		}
		wholeFreePeers := 0
		for _, j := range g.Peers {
			if p.whole(j) {
				wholeFreePeers++
			}
		}
		wholeBit := 0
		if p.whole(i) {
			wholeBit = 1
		}
		key := [4]int{len(p.free[i]) - size, wholeBit, wholeFreePeers, g.Index}
		if best < 0 || less(key[:], bestKey[:]) {
			best, bestKey = i, key
		}
	}
	if best < 0 {
		return nil
	}
	return p.take(best, size)
}

func less(a, b []int) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func (p *pool) wholeGPUs(size int, mustGPUs []int) []string {
	per := p.l.SlicesPerGPU
	if per <= 0 || size%per != 0 {
		return nil
	}
	n := size / per
	if len(mustGPUs) > n {
		return nil
	}
	var cand []int
	isCand := map[int]bool{}
	for i, g := range p.l.GPUs {
		if g.Slices == per && p.whole(i) {
			cand = append(cand, i)
			isCand[i] = true
		}
	}
	for _, m := range mustGPUs {
		if !isCand[m] {
			return nil
		}
	}
	if len(cand) < n {
		return nil
	}
	set := p.pickConnected(cand, n, mustGPUs)
	if set == nil {
		return nil
	}
	var out []string
	for _, i := range set {
		out = append(out, p.take(i, per)...)
	}
	return out
}

// pickConnected chooses n of cand (containing must) maximising NVLink links
// inside the set, then minimising NUMA spread, then lowest indexes: a greedy
// growth from every start, which is exact for pairs and for NVSwitch nodes.
func (p *pool) pickConnected(cand []int, n int, must []int) []int {
	var best []int
	var bestKey [3]int
	starts := cand
	if len(must) > 0 {
		starts = must[:1]
	}
	for _, s := range starts {
		set := []int{s}
		in := map[int]bool{s: true}
		for _, m := range must {
			if !in[m] {
				set = append(set, m)
				in[m] = true
			}
		}
		for len(set) < n {
			next, nextKey := -1, [3]int{}
			for _, c := range cand {
				if in[c] {
					continue
				}
				links := 0
				for _, q := range p.l.GPUs[c].Peers {
					if in[q] {
						links++
					}
				}
				sameNUMA := 0
				if p.l.GPUs[c].NUMA == p.l.GPUs[s].NUMA {
					sameNUMA = 1
				}
				key := [3]int{-links, -sameNUMA, p.l.GPUs[c].Index}
				if next < 0 || less(key[:], nextKey[:]) {
					next, nextKey = c, key
				}
			}
			if next < 0 {
				break
			}
			set = append(set, next)
			in[next] = true
		}
		if len(set) < n {
			continue
		}
		links, numas, idx := 0, map[int]bool{}, 0
		for _, a := range set {
			numas[p.l.GPUs[a].NUMA] = true
			idx += p.l.GPUs[a].Index
			for _, q := range p.l.GPUs[a].Peers {
				if in[q] {
					links++
				}
			}
		}
		key := [3]int{-links, len(numas), idx}
		if best == nil || less(key[:], bestKey[:]) {
			best, bestKey = set, key
		}
	}
	sort.Slice(best, func(a, b int) bool { return p.l.GPUs[best[a]].Index < p.l.GPUs[best[b]].Index })
	return best
}

func (p *pool) spread(size int, mustGPUs []int) []string {
	var out []string
	taken := map[int]bool{}
	for _, i := range mustGPUs {
		for _, k := range p.must[i] {
			out = append(out, api.SliceID{GPU: p.l.GPUs[i].UUID, Index: k}.String())
		}
	}
	inOut := map[string]bool{}
	for _, id := range out {
		inOut[id] = true
	}
	takeFrom := func(i int) {
		taken[i] = true
		for _, k := range p.free[i] {
			if len(out) >= size {
				return
			}
			id := api.SliceID{GPU: p.l.GPUs[i].UUID, Index: k}.String()
			if !inOut[id] {
				out = append(out, id)
				inOut[id] = true
			}
		}
	}
	for _, i := range mustGPUs {
		takeFrom(i)
	}
	for len(out) < size {
		next, nextKey := -1, [3]int{}
		for i, g := range p.l.GPUs {
			if taken[i] || len(p.free[i]) == 0 {
				continue
			}
			links := 0
			for _, q := range g.Peers {
				if taken[q] {
					links++
				}
			}
			key := [3]int{-links, -len(p.free[i]), g.Index}
			if next < 0 || less(key[:], nextKey[:]) {
				next, nextKey = i, key
			}
		}
		if next < 0 {
			break
		}
		takeFrom(next)
	}
	for _, id := range p.other {
		if len(out) >= size {
			break
		}
		out = append(out, id)
	}
	return out
}
