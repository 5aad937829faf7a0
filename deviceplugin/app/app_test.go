package app

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"
)

func TestDiscoverFake(t *testing.T) {
	var out, errb bytes.Buffer
	code := Main(context.Background(), []string{"discover", "--json", "--fake-gpus=4xH100-80GB,nvlink=pairs,numa=2,clique=c0", "--xid-wait=100ms"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rep DiscoverReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.GPUs) != 4 || len(rep.Xid.Registered) != 4 || rep.Inventory.TotalSlices() != 16 || rep.Health[rep.GPUs[0].UUID] != "ok" {
		t.Errorf("report %+v", rep)
	}
	out.Reset()
	if code := Main(context.Background(), []string{"discover", "--fake-gpus=dgxh100", "--xid-wait=10ms"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "NVIDIA H100 80GB HBM3") || !strings.Contains(out.String(), "registered on 8 GPUs") {
		t.Errorf("table output:\n%s", out.String())
	}
}

func TestDiscoverRealWithoutDriver(t *testing.T) {
	var out, errb bytes.Buffer
	code := Main(context.Background(), []string{"discover", "--nvml-lib=/nonexistent/libnvidia-ml.so.1"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "NVML library not found") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

func TestBadArgs(t *testing.T) {
	for _, args := range [][]string{{"frobnicate"}, {"serve", "--no-such-flag"}, {"discover", "extra"}} {
		var out, errb bytes.Buffer
		if code := Main(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"serve", "--fake-gpus=8xH900"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "H900") {
		t.Errorf("bad fake spec: exit %d %q", code, errb.String())
	}
	if code := Main(context.Background(), []string{"serve", "--fake-gpus=1xH100-80GB"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "--node-name") {
		t.Errorf("missing node: exit %d %q", code, errb.String())
	}
}

func TestServeNoKube(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	done := make(chan int, 1)
	var out, errb bytes.Buffer
	go func() {
		done <- Main(ctx, []string{"serve", "--no-kube", "--fake-gpus=2xA100-40GB", "--device-plugin-dir=" + dir + "/", "--metrics-address=127.0.0.1:0"}, &out, &errb)
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}

// TestListenRetryWaitsForThePort: a port still held by a killed plugin's
// process is waited for, not a reason to exit.
func TestListenRetryWaitsForThePort(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := held.Addr().String()
	go func() {
		time.Sleep(600 * time.Millisecond)
		held.Close()
	}()
	lis, err := listenRetry(context.Background(), addr, 10*time.Second)
	if err != nil {
		t.Fatalf("listenRetry: %v", err)
	}
	lis.Close()
	held2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held2.Close()
	if _, err := listenRetry(context.Background(), held2.Addr().String(), 300*time.Millisecond); err == nil {
		t.Fatal("listenRetry succeeded on a port that stays taken")
	}
}
