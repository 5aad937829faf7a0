package scheduler_bench

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestGPUMixSettleFor(t *testing.T) {
	cases := map[string]struct {
		name   string
		want   time.Duration
		wantOK bool
	}{
		"quick GPU mix":         {name: "BenchmarkPerfScheduling/GPUMix_Tessera/quick", want: 10 * time.Second, wantOK: true},
		"full GPU mix, DRA":     {name: "BenchmarkPerfScheduling/GPUMix_TesseraDRA/full", want: 30 * time.Second, wantOK: true},
		"Koordinator's harness": {name: "BenchmarkPerfScheduling/GPUMix_Koordinator/smoke", want: 5 * time.Second, wantOK: true},
		"not a GPU mix":         {name: "BenchmarkPerfScheduling/TAS_Tessera/quick"},
		"unknown size":          {name: "BenchmarkPerfScheduling/GPUMix_Native/huge"},
		"too short":             {name: "GPUMix_Native/quick"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, ok := GPUMixSettleFor(tc.name)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("GPUMixSettleFor(%q) = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestSettleUntilFull(t *testing.T) {
	// measure reports free slices from a script, one entry per call; the
	// last entry repeats.
	script := func(free ...int) (func() (*Record, error), *int) {
		calls := 0
		return func() (*Record, error) {
			f := free[min(calls, len(free)-1)]
			calls++
			return &Record{TotalSlices: 64, UsedSlices: 64 - f, FreeSlices: f}, nil
		}, &calls
	}
	t.Run("full at once: one measurement, no wait", func(t *testing.T) {
		measure, calls := script(0)
		rec, err := SettleUntilFull(context.Background(), time.Hour, time.Millisecond, measure)
		if err != nil || rec.FreeSlices != 0 || *calls != 1 {
			t.Fatalf("got %+v, %v after %d calls; want full after 1", rec, err, *calls)
		}
	})
	t.Run("fills while it waits", func(t *testing.T) {
		measure, calls := script(6, 6, 2, 0, 5)
		rec, err := SettleUntilFull(context.Background(), time.Hour, time.Millisecond, measure)
		if err != nil || rec.FreeSlices != 0 || *calls != 4 {
			t.Fatalf("got %+v, %v after %d calls; want full after 4", rec, err, *calls)
		}
		if rec.SettleMs <= 0 {
			t.Errorf("SettleMs = %v, want the time waited", rec.SettleMs)
		}
	})
	t.Run("never full: measured at the deadline", func(t *testing.T) {
		measure, calls := script(6)
		start := time.Now()
		rec, err := SettleUntilFull(context.Background(), 50*time.Millisecond, 10*time.Millisecond, measure)
		if err != nil || rec.FreeSlices != 6 {
			t.Fatalf("got %+v, %v; want the last measurement (6 free)", rec, err)
		}
		if waited := time.Since(start); waited < 50*time.Millisecond || *calls < 2 {
			t.Errorf("returned after %v and %d calls; want the whole 50ms, measured more than once", waited, *calls)
		}
		if rec.SettleMs < 50 {
			t.Errorf("SettleMs = %v, want at least 50", rec.SettleMs)
		}
	})
	t.Run("a failed measurement is returned", func(t *testing.T) {
		boom := errors.New("list pods: connection refused")
		_, err := SettleUntilFull(context.Background(), time.Hour, time.Millisecond, func() (*Record, error) { return nil, boom })
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v, want %v", err, boom)
		}
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		measure, _ := script(6)
		cancel()
		_, err := SettleUntilFull(ctx, time.Hour, time.Hour, measure)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

func TestMeasure(t *testing.T) {
	cases := map[string]struct {
		name      string
		free      int
		wantCalls int
		wantWait  bool
	}{
		"not a GPU mix: measured once, however many slices are free": {name: "BenchmarkPerfScheduling/TAS_Tessera/quick", free: 6, wantCalls: 1},
		"a full GPU mix: measured once":                              {name: "BenchmarkPerfScheduling/GPUMix_Native/quick", wantCalls: 1},
		"a GPU mix with free slices: measured until the settle ends": {name: "BenchmarkPerfScheduling/GPUMix_Native/quick", free: 6, wantWait: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 1200*time.Millisecond)
			defer cancel()
			calls := 0
			_, err := Measure(ctx, tc.name, func() (*Record, error) {
				calls++
				return &Record{TotalSlices: 64, UsedSlices: 64 - tc.free, FreeSlices: tc.free}, nil
			})
			if tc.wantWait {
				// The quick settle is 10 s: still polling when the context ends.
				if !errors.Is(err, context.DeadlineExceeded) || calls < 2 {
					t.Fatalf("err = %v after %d calls; want it still settling (several calls) at the deadline", err, calls)
				}
				return
			}
			if err != nil || calls != tc.wantCalls {
				t.Fatalf("err = %v after %d calls; want nil after %d", err, calls, tc.wantCalls)
			}
		})
	}
}
