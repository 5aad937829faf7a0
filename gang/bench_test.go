package gang

import (
	"fmt"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// benchCluster is 5000 nodes × 8 GPUs (NVSwitch, 8 slices per GPU) in 625
// cliques of 8 nodes. fill is the share of GPUs (0..8 per node) already
// partly used by single pods, spread deterministically.
func benchCluster(b *testing.B, fill int) (*Ledger, *Manager) {
	b.Helper()
	l := NewLedger(LedgerOptions{})
	m := NewManager(l, Options{Clock: clocktesting.NewFakeClock(t0)})
	for c := 0; c < 625; c++ {
		for i := 0; i < 8; i++ {
			tn := tnode{name: fmt.Sprintf("c%03d-n%d", c, i), gpus: 8, nvlink: "all",
				labels: lbl(fmt.Sprintf("%s=c%03d", clique, c))}
			if err := l.UpsertNode(tn.name, tn.labels, tn.inventory()); err != nil {
				b.Fatal(err)
			}
			for g := 0; g < fill; g++ {
				used := 1 + (c+i+g)%7 // 1..7 slices used
				l.SetPod(PodInfo{UID: fmt.Sprintf("%s-p%d", tn.name, g), Node: tn.name, Assignment: ids(rng(tn.name, g, 0, used-1))})
			}
		}
	}
	return l, m
}

// BenchmarkPlanGang plans (and reserves, then frees) one 4-member gang of
// 2-slice ranks that must fit in one clique, as PreFilter of its first
// member does.
func BenchmarkPlanGang(b *testing.B) {
	for _, fill := range []int{0, 6} {
		b.Run(fmt.Sprintf("5000nodes-fill%d", fill), func(b *testing.B) {
			_, m := benchCluster(b, fill)
			spec := GangSpec{Key: "bench/llama", MinMember: 4, Request: 2, RequiredTopology: clique, ScheduleTimeout: time.Minute}
			p := member(spec.Key, 0, 2)
			b.ReportAllocs()
			for b.Loop() {
				if err := m.SetGang(spec); err != nil {
					b.Fatal(err)
				}
				if _, err := m.PreFilter(p); err != nil {
					b.Fatal(err)
				}
				m.RemoveGang(spec.Key)
			}
		})
	}
}

// BenchmarkPlanGangPreferred: no required level, preferred clique (the whole
// cluster is one domain).
func BenchmarkPlanGangPreferred(b *testing.B) {
	_, m := benchCluster(b, 6)
	spec := GangSpec{Key: "bench/llama", MinMember: 4, Request: 2, PreferredTopology: clique, ScheduleTimeout: time.Minute}
	p := member(spec.Key, 0, 2)
	b.ReportAllocs()
	for b.Loop() {
		if err := m.SetGang(spec); err != nil {
			b.Fatal(err)
		}
		if _, err := m.PreFilter(p); err != nil {
			b.Fatal(err)
		}
		m.RemoveGang(spec.Key)
	}
}

// BenchmarkFitsScore is the per-node cost of the Filter and Score adapters
// for a single pod.
func BenchmarkFitsScore(b *testing.B) {
	l, _ := benchCluster(b, 6)
	node := "c100-n3"
	b.ReportAllocs()
	for b.Loop() {
		if !l.Fits(node, 2) {
			b.Fatal("does not fit")
		}
		if l.Score(node, 2) == 0 {
			b.Fatal("zero score")
		}
	}
}

// BenchmarkFitsScoreParallel: Filter/Score for many nodes from parallel
// goroutines, as the framework does.
func BenchmarkFitsScoreParallel(b *testing.B) {
	l, _ := benchCluster(b, 6)
	names := make([]string, 5000)
	for i := range names {
		names[i] = fmt.Sprintf("c%03d-n%d", i/8, i%8)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			n := names[i%len(names)]
			if l.Fits(n, 2) {
				l.Score(n, 2)
			}
			i++
		}
	})
}

// BenchmarkSingleReserve is the Reserve+Unreserve of a single pod.
func BenchmarkSingleReserve(b *testing.B) {
	_, m := benchCluster(b, 6)
	p := single("s", 2)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Reserve(p, "c100-n3"); err != nil {
			b.Fatal(err)
		}
		m.Unreserve(p)
	}
}
