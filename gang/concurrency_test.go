package gang

import (
	"fmt"
	"sync"
	"testing"
)

// TestConcurrentUse exercises the adapters' access pattern: Filter/Score
// from many goroutines while Reserve/Unreserve, informer updates and gang
// planning run. Run with -race.
func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, cliques("c", 4, 4, 8)...)
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for r := 0; r < 4; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := fmt.Sprintf("c%d-n%d", i%4, (i/4)%4)
				if f.l.Fits(n, 2) {
					f.l.Score(n, 2)
				}
				f.l.Fragmentation()
			}
		}()
	}
	var writers sync.WaitGroup
	for w := 0; w < 3; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := 0; i < 200; i++ {
				p := single(fmt.Sprintf("w%d-%d", w, i), 1+i%8)
				node := fmt.Sprintf("c%d-n%d", i%4, w)
				if _, err := f.m.Reserve(p, node); err == nil {
					if i%3 == 0 {
						f.m.Unreserve(p)
					} else {
						_, s, _, _ := f.l.Held(p.UID)
						f.l.SetPod(PodInfo{UID: p.UID, Node: node, Assignment: s})
					}
				}
				key := fmt.Sprintf("ns/g%d-%d", w, i)
				if err := f.m.SetGang(GangSpec{Key: key, MinMember: 2, Request: 4, RequiredTopology: clique}); err != nil {
					t.Error(err)
					return
				}
				f.m.PreFilter(member(key, 0, 4))
				f.m.RemoveGang(key)
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	if err := checkInvariants(f.l); err != nil {
		t.Fatal(err)
	}
}
