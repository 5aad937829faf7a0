package app

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/tessera-gpu/tessera/api"
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

// fakeKubelet is the kubelet's registration service on a socket of a test's
// own directory: it records what registers.
type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	registered chan *pluginapi.RegisterRequest
}

func (k *fakeKubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.registered <- r
	return &pluginapi.Empty{}, nil
}

// TestServeNoKube runs serve without an API server: the plugin registers
// with the kubelet, serves its slices, and exits 0 when stopped.
func TestServeNoKube(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	lis, err := net.Listen("unix", filepath.Join(dir, "kubelet.sock"))
	if err != nil {
		t.Fatal(err)
	}
	kubelet := &fakeKubelet{registered: make(chan *pluginapi.RegisterRequest, 4)}
	srv := grpc.NewServer()
	pluginapi.RegisterRegistrationServer(srv, kubelet)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	serveCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan int, 1)
	var out, errb bytes.Buffer
	go func() {
		done <- Main(serveCtx, []string{"serve", "--no-kube", "--fake-gpus=2xA100-40GB", "--device-plugin-dir=" + dir + "/", "--metrics-address=127.0.0.1:0"}, &out, &errb)
	}()
	var reg *pluginapi.RegisterRequest
	select {
	case reg = <-kubelet.registered:
	case code := <-done:
		t.Fatalf("serve exited %d before registering: %s", code, errb.String())
	case <-ctx.Done():
		t.Fatal("the plugin never registered with the kubelet")
	}
	if reg.ResourceName != api.ResourceName || reg.Version != pluginapi.Version || !reg.Options.GetGetPreferredAllocationAvailable() {
		t.Errorf("registration %+v", reg)
	}

	// It answers on the endpoint it registered: the slices of both GPUs.
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, reg.Endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := pluginapi.NewDevicePluginClient(conn).ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("ListAndWatch: %v", err)
	}
	gpus := map[string]int{}
	for _, d := range resp.Devices {
		id, err := api.ParseSliceID(d.ID)
		if err != nil || d.Health != pluginapi.Healthy {
			t.Errorf("device %q health %q: %v", d.ID, d.Health, err)
			continue
		}
		gpus[id.GPU]++
	}
	if len(gpus) != 2 {
		t.Errorf("slices per GPU %v, want slices of 2 GPUs", gpus)
	}
	for gpu, n := range gpus {
		if n != len(resp.Devices)/2 {
			t.Errorf("GPU %s has %d of %d slices, want half", gpu, n, len(resp.Devices))
		}
	}

	stop()
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
	// The port is freed once listenRetry has found it taken and said it
	// retries, so the success below is a retry's, not a first try's.
	retrying := make(chan struct{}, 1)
	logger := funcr.New(func(_, args string) {
		if strings.Contains(args, "retrying") {
			select {
			case retrying <- struct{}{}:
			default:
			}
		}
	}, funcr.Options{})
	go func() {
		<-retrying
		held.Close()
	}()
	lis, err := listenRetry(klog.NewContext(context.Background(), logger), addr, 10*time.Second)
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
