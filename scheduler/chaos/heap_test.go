package chaos

import (
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
)

// memProfileRate is the heap profile's sampling rate for this package's
// tests: one sample per 64 KiB allocated on average (the runtime's default
// is 512 KiB), so that the split of the heap below is accurate to about a
// MiB. TestMain sets it before anything allocates much.
const memProfileRate = 64 << 10

// heapSample is the live heap after a forced GC, split by who holds it.
// The scheduler runs in this process, so do the test's clients (which hold
// nothing between operations).
type heapSample struct {
	// total is runtime.MemStats.HeapAlloc, exact.
	total float64
	// events is what client-go's event recorders hold (estimated from the
	// heap profile). The kube-scheduler's events/v1 broadcaster keeps every
	// event it sent in a cache for series detection and drops an event only
	// when its 6-minute sweep finds it older than 6 minutes: up to 12
	// minutes of events (one Scheduled per bound pod, one GangPlaced per
	// gang, ...), bounded in time, not in count, and not Tessera's state.
	events float64
	// nodes is what decoding Node objects allocated and is still live
	// (estimated from the heap profile): the informer's nodes and what
	// points into older versions of them.
	nodes float64
	// tessera is what was allocated by the scheduler plugin and the gang
	// packages and is still live (estimated from the heap profile).
	tessera float64
}

// other is the heap minus the event recorders' cache and the decoded
// nodes.
func (h heapSample) other() float64 { return h.total - h.events - h.nodes }

const mib = 1 << 20

// sampleHeap forces a GC (two, so sync.Pools are emptied too) and reads the
// heap and its profile.
func sampleHeap() heapSample {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	h := heapSample{total: float64(m.HeapAlloc) / mib}
	var recs []runtime.MemProfileRecord
	n, _ := runtime.MemProfile(nil, false)
	for {
		recs = make([]runtime.MemProfileRecord, n+64)
		var ok bool
		if n, ok = runtime.MemProfile(recs, false); ok {
			recs = recs[:n]
			break
		}
	}
	owners := map[uintptr]string{}
	for i := range recs {
		r := &recs[i]
		b := heapEstimate(r.InUseBytes(), r.InUseObjects(), runtime.MemProfileRate)
		if b == 0 {
			continue
		}
		switch stackOwner(r.Stack(), owners) {
		case "events":
			h.events += b / mib
		case "nodes":
			h.nodes += b / mib
		case "tessera":
			h.tessera += b / mib
		}
	}
	return h
}

// heapEstimate turns the sampled bytes of one allocation site into an
// estimate of its real bytes: an object of size s is sampled with
// probability 1-exp(-s/rate).
func heapEstimate(bytes, objects int64, rate int) float64 {
	if bytes <= 0 || objects <= 0 {
		return 0
	}
	if rate <= 1 {
		return float64(bytes)
	}
	avg := float64(bytes) / float64(objects)
	return float64(bytes) / (1 - math.Exp(-avg/float64(rate)))
}

// stackOwner says whose an allocation is: "events" when any frame is in
// client-go's event recording, else "nodes" when it decodes a Node, else
// "tessera" when a frame is in the scheduler plugin or the gang packages,
// else "".
func stackOwner(stack []uintptr, cache map[uintptr]string) string {
	owner := ""
	for _, pc := range stack {
		o, ok := cache[pc]
		if !ok {
			frames := runtime.CallersFrames([]uintptr{pc})
			f, _ := frames.Next()
			o = frameOwner(f.Function)
			cache[pc] = o
		}
		switch {
		case o == "events":
			return o
		case o == "nodes", o == "tessera" && owner == "":
			owner = o
		}
	}
	return owner
}

func frameOwner(fn string) string {
	switch {
	case strings.HasPrefix(fn, "k8s.io/client-go/tools/events."), strings.HasPrefix(fn, "k8s.io/client-go/tools/record."):
		return "events"
	case fn == "k8s.io/api/core/v1.(*Node).Unmarshal":
		return "nodes"
	case strings.HasPrefix(fn, "github.com/tessera-gpu/tessera/scheduler."), strings.HasPrefix(fn, "github.com/tessera-gpu/tessera/gang."):
		return "tessera"
	}
	return ""
}

// writeHeapProfile writes the heap profile (as of the GC sampleHeap just
// ran) to dir/name when dir is set (TESSERA_LOAD_PROFILE_DIR); compare two
// with `go tool pprof -base base.heap end.heap`.
func writeHeapProfile(t *testing.T, dir, name string) {
	if dir == "" {
		return
	}
	f, err := os.Create(filepath.Join(dir, name))
	if err == nil {
		err = pprof.Lookup("heap").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Errorf("writing heap profile %s: %v", name, err)
	}
}

// TestHeapEstimate checks the attribution rules and the sampling scale.
func TestHeapEstimate(t *testing.T) {
	if frameOwner("k8s.io/client-go/tools/events.(*eventBroadcasterImpl).recordToSink.func1.1") != "events" ||
		frameOwner("github.com/tessera-gpu/tessera/gang.(*Ledger).UpsertNode") != "tessera" ||
		frameOwner("k8s.io/api/core/v1.(*Node).Unmarshal") != "nodes" ||
		frameOwner("github.com/tessera-gpu/tessera/scheduler/chaos.TestLoad") != "" {
		t.Fatal("frameOwner misattributes")
	}
	if got := heapEstimate(1000, 10, 1); got != 1000 {
		t.Errorf("rate 1: %v bytes, want 1000", got)
	}
	// A 256 B object is sampled with probability ~1/256 at a 64 KiB rate.
	if got := heapEstimate(256, 1, 64<<10); got < 60<<10 || got > 70<<10 {
		t.Errorf("one sampled 256 B object stands for %v bytes, want ~64 KiB", got)
	}
	// An object far above the rate is always sampled.
	if got := heapEstimate(10<<20, 1, 64<<10); got != 10<<20 {
		t.Errorf("a 10 MiB object stands for %v bytes", got)
	}
}
