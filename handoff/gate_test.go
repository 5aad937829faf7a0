package handoff

import (
	"context"
	"errors"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

func pod(uid, gang string, created int, sizes ...int) Pod {
	return Pod{UID: uid, Key: "ns/" + uid, Created: t0.Add(time.Duration(created) * time.Second), Gang: gang, Sizes: sizes}
}

// admitAsync starts Admit and returns a channel with its result.
func admitAsync(g *Gate, uid string) (<-chan error, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := g.Admit(ctx, uid)
		done <- err
	}()
	return done, cancel
}

// requireBlocked proves Admit is waiting: it is still running after the
// gate has re-evaluated it (the waiter registers on the change channel
// only after evaluating, so a change notification that finds it still
// blocked shows it evaluated and stayed).
func requireBlocked(t *testing.T, g *Gate, done <-chan error) {
	t.Helper()
	for i := 0; i < 3; i++ {
		g.mu.Lock()
		g.notifyLocked()
		g.mu.Unlock()
		select {
		case err := <-done:
			t.Fatalf("Admit returned (%v), want it blocked", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func requireAdmitted(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Admit: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Admit still blocked")
	}
}

func TestNodeWithoutConfirmationHoldsNothing(t *testing.T) {
	g := New(clocktesting.NewFakeClock(t0), time.Minute)
	g.Reserve("n", pod("a", "", 0, 2))
	g.Observed("n", pod("b", "", 1, 2))
	if g.Len() != 0 {
		t.Fatalf("gate tracks %d pods on a node that does not confirm", g.Len())
	}
	if _, err := g.Admit(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
}

func TestSinglePodsOfOneSizeWaitForConfirmation(t *testing.T) {
	g := New(clocktesting.NewFakeClock(t0), time.Minute)
	g.SetNode("n", true)
	g.Reserve("n", pod("s1", "", 5, 2))
	g.Reserve("n", pod("s2", "", 1, 2)) // older, but bound second
	g.Reserve("n", pod("s3", "", 2, 1)) // another size
	g.Reserve("m", pod("s4", "", 3, 2)) // another node
	if _, err := g.Admit(context.Background(), "s1"); err != nil {
		t.Fatal(err)
	}
	done, cancel := admitAsync(g, "s2")
	defer cancel()
	requireBlocked(t, g, done)
	for _, uid := range []string{"s3", "s4"} {
		if _, err := g.Admit(context.Background(), uid); err != nil {
			t.Fatal(err)
		}
	}
	g.Bound("s1")
	requireBlocked(t, g, done)
	g.Forget("s1") // the device plugin confirmed it
	requireAdmitted(t, done)
}

func TestGangMembersBindInThePluginsOrderWithoutWaitingForConfirmation(t *testing.T) {
	g := New(clocktesting.NewFakeClock(t0), time.Minute)
	g.SetNode("n", true)
	g.Reserve("n", pod("a1", "ns/a", 1, 2))
	g.Reserve("n", pod("a0", "ns/a", 0, 2))
	done, cancel := admitAsync(g, "a1")
	defer cancel()
	requireBlocked(t, g, done) // a0 is older and not bound yet
	if _, err := g.Admit(context.Background(), "a0"); err != nil {
		t.Fatal(err)
	}
	requireBlocked(t, g, done)
	g.Bound("a0") // bound, not confirmed: enough for a gang mate
	requireAdmitted(t, done)
}

func TestOtherGangWaitsForConfirmation(t *testing.T) {
	g := New(clocktesting.NewFakeClock(t0), time.Minute)
	g.SetNode("n", true)
	g.Reserve("n", pod("a0", "ns/a", 5, 2))
	g.Reserve("n", pod("b0", "ns/b", 0, 1, 2)) // an init container of 1, a container of 2
	if _, err := g.Admit(context.Background(), "a0"); err != nil {
		t.Fatal(err)
	}
	g.Bound("a0")
	done, cancel := admitAsync(g, "b0")
	defer cancel()
	requireBlocked(t, g, done)
	g.Forget("a0")
	requireAdmitted(t, done)
}

func TestUnconfirmedPodStopsBlockingAfterTheTimeout(t *testing.T) {
	clk := clocktesting.NewFakeClock(t0)
	g := New(clk, 30*time.Second)
	g.SetNode("n", true)
	g.Observed("n", pod("foreign", "", 0, 2)) // bound by someone else, never confirmed
	g.Reserve("n", pod("s", "", 1, 2))
	done, cancel := admitAsync(g, "s")
	defer cancel()
	requireBlocked(t, g, done)
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond) // the waiter's timer, armed with the time left
	}
	clk.Step(29 * time.Second)
	requireBlocked(t, g, done)
	clk.Step(2 * time.Second)
	requireAdmitted(t, done)
}

func TestAdmitEndsWithItsContext(t *testing.T) {
	g := New(clocktesting.NewFakeClock(t0), time.Minute)
	g.SetNode("n", true)
	g.Observed("n", pod("x", "", 0, 2))
	g.Reserve("n", pod("s", "", 1, 2))
	done, cancel := admitAsync(g, "s")
	requireBlocked(t, g, done)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Admit = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Admit ignored its context")
	}
}

func TestNodeThatStopsConfirmingDropsItsPods(t *testing.T) {
	g := New(clocktesting.NewFakeClock(t0), time.Minute)
	g.SetNode("n", true)
	g.Observed("n", pod("x", "", 0, 2))
	g.Reserve("n", pod("s", "", 1, 2))
	done, cancel := admitAsync(g, "s")
	defer cancel()
	requireBlocked(t, g, done)
	g.SetNode("n", false)
	requireAdmitted(t, done)
	if g.Len() != 0 {
		t.Fatalf("gate still tracks %d pods", g.Len())
	}
}
