package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
)

func TestClusterNodesReady(t *testing.T) {
	ctx := context.Background()
	client, err := testCluster.Client()
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	real, simulated := 0, 0
	cliques := map[string]int{}
	for _, n := range nodes.Items {
		if !cluster.NodeReady(&n) {
			t.Errorf("node %s is not Ready", n.Name)
		}
		if n.Labels[cluster.SimulatedLabel] == "true" {
			simulated++
			cliques[n.Labels[api.LabelClique]]++
			q := n.Status.Allocatable[api.ResourceName]
			if q.Value() != 32 {
				t.Errorf("simulated node %s has %s %s allocatable, want 32", n.Name, q.String(), api.ResourceName)
			}
			inv, err := api.ParseInventory(n.Annotations[api.AnnotationInventory])
			if err != nil {
				t.Errorf("simulated node %s inventory: %v", n.Name, err)
			} else if len(inv.GPUs) != 8 {
				t.Errorf("simulated node %s inventory has %d GPUs, want 8", n.Name, len(inv.GPUs))
			}
		} else if n.Name == testCluster.RealNodeName {
			real++
		}
	}
	if real != 1 || simulated != simulatedNodes {
		t.Errorf("got %d real and %d simulated nodes, want 1 and %d", real, simulated, simulatedNodes)
	}
	if len(cliques) != 2 || cliques["clique-0"] != 4 || cliques["clique-1"] != 4 {
		t.Errorf("clique labels = %v, want 4 nodes in each of clique-0 and clique-1", cliques)
	}
}

// TestPodFromOwnImageRunsOnRealNode runs our probe image (imported without a
// registry) through the default scheduler and the real kubelet to
// completion, and reads its log through the apiserver → kubelet path.
func TestPodFromOwnImageRunsOnRealNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client, err := testCluster.Client()
	if err != nil {
		t.Fatal(err)
	}
	ns := createNamespace(ctx, t, "probe")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: ns},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			NodeSelector:  map[string]string{"tessera.dev/real-node": "true"},
			Containers: []corev1.Container{{
				Name:            "probe",
				Image:           "localhost/tessera/e2e-probe:dev",
				ImagePullPolicy: corev1.PullNever,
				Env:             []corev1.EnvVar{{Name: "TESSERA_E2E_MARK", Value: "hello"}},
			}},
		},
	}
	if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	err = wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		got, err = client.CoreV1().Pods(ns).Get(ctx, "probe", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return got.Status.Phase == corev1.PodSucceeded || got.Status.Phase == corev1.PodFailed, nil
	})
	if err != nil {
		t.Fatalf("pod did not finish: %v; status: %+v", err, got.Status)
	}
	if got.Spec.NodeName != testCluster.RealNodeName {
		t.Errorf("pod ran on %q, want the real node %q", got.Spec.NodeName, testCluster.RealNodeName)
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod phase %s, want Succeeded; status: %+v", got.Status.Phase, got.Status)
	}
	logs, err := client.CoreV1().Pods(ns).GetLogs("probe", &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("reading logs: %v", err)
	}
	for _, want := range []string{"env TESSERA_E2E_MARK=hello", "uid 65532", "tessera-e2e-probe ok"} {
		if !strings.Contains(string(logs), want) {
			t.Errorf("log lacks %q; log:\n%s", want, logs)
		}
	}
}

func createNamespace(ctx context.Context, t *testing.T, prefix string) string {
	t.Helper()
	client, err := testCluster.Client()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	// The pod admission needs the namespace's default service account.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := client.CoreV1().ServiceAccounts(ns.Name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("namespace %s got no default service account: %v", ns.Name, err)
	}
	return ns.Name
}

// freePort returns a free port on 127.0.0.1 (see freePortBlock).
func freePort(t *testing.T) int {
	t.Helper()
	return freePortBlock(t, 1)
}

// freePortBlock returns the first of n consecutive ports on 127.0.0.1 that
// are free now and lie below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range). Ports from bind(":0") are inside that
// range — odd ones; the kernel gives outbound connections the even ones —
// so port+1 of such a port is where any client socket of the machine
// (kubelet probes, HTTP clients, other processes) may sit, in TIME_WAIT for
// a minute after it closed, and a server binding it then fails with
// "address already in use". A shard-server rank on hostNetwork did that
// (issue 8: the recreated group of TestFaultShardRankKilled failed). Below
// the range only explicit binds can take a port.
func freePortBlock(t *testing.T, n int) int {
	t.Helper()
	const floor = 20000
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil {
				low = v
			}
		}
	}
	if low-n <= floor {
		t.Fatalf("the ephemeral port range starts at %d: no room below it for %d ports above %d", low, n, floor)
	}
	for range 100 {
		base := floor + rand.IntN(low-n-floor)
		free := true
		var ls []net.Listener
		for p := base; p < base+n && free; p++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				free = false
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if free {
			return base
		}
	}
	t.Fatalf("no %d consecutive free ports in [%d, %d)", n, floor, low)
	return 0
}
