package e2e

// Fault tests (issue 8): each kills or breaks one part of the running
// system, checks that nothing is lost, measures how long the system takes to
// be whole again, and leaves the cluster as it found it (Tessera ready, every
// slice of the real node free) for the tests after it.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/e2e/scenario"
	"github.com/tessera-gpu/tessera/scheduler"
)

const (
	devicePluginMetrics = "http://127.0.0.1:9400"
	devicePluginConfig  = "tessera-device-plugin-config"
)

// figure records a measured number (see scenario.RecordFigure).
func figure(t *testing.T, name string, value float64, unit string) {
	t.Helper()
	scenario.RecordFigure(t, name, value, unit)
}

// realNodeAllocatable is the real node's allocatable slice count.
func realNodeAllocatable(ctx context.Context, e *scenario.Env) (int64, error) {
	node, err := e.Client.CoreV1().Nodes().Get(ctx, testCluster.RealNodeName, metav1.GetOptions{})
	if err != nil {
		return 0, err
	}
	q := node.Status.Allocatable[api.ResourceName]
	return q.Value(), nil
}

// poll is the e2e tests' one poll helper, wait.PollUntilContextTimeout
// keeping the last state: it calls cond at once and then every interval
// until cond reports done, and returns how long that took. Past timeout (or
// when ctx ends) it returns an error naming what it waited for, how long,
// and the last state cond described. API errors inside cond are states to
// report, not reasons to stop: the next poll retries.
func poll(ctx context.Context, what string, interval, timeout time.Duration, cond func(ctx context.Context) (done bool, state string)) (time.Duration, error) {
	start := time.Now()
	var state string
	err := wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(ctx context.Context) (bool, error) {
		var done bool
		done, state = cond(ctx)
		return done, nil
	})
	if err != nil {
		return time.Since(start), fmt.Errorf("%s: not after %s (%v); last: %s", what, time.Since(start).Round(100*time.Millisecond), err, state)
	}
	return time.Since(start), nil
}

// waitFor polls as poll does and fails the test when cond is not done in
// time; it returns how long cond took to be done.
func waitFor(ctx context.Context, t *testing.T, what string, interval, timeout time.Duration, cond func(ctx context.Context) (done bool, state string)) time.Duration {
	t.Helper()
	d, err := poll(ctx, what, interval, timeout, cond)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitAllocatable waits until the real node advertises want slices and
// returns how long that took.
func waitAllocatable(ctx context.Context, t *testing.T, e *scenario.Env, want int64, timeout time.Duration) time.Duration {
	t.Helper()
	return waitFor(ctx, t, fmt.Sprintf("real node allocatable %s = %d", api.ResourceName, want), 100*time.Millisecond, timeout,
		func(ctx context.Context) (bool, string) {
			n, err := realNodeAllocatable(ctx, e)
			return err == nil && n == want, fmt.Sprintf("%d (%v)", n, err)
		})
}

// devicePluginPod is the device plugin pod on the real node.
func devicePluginPod(ctx context.Context, e *scenario.Env) (*corev1.Pod, error) {
	list, err := e.Client.CoreV1().Pods(cluster.TesseraNamespace).List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + testCluster.RealNodeName})
	if err != nil {
		return nil, err
	}
	for i := range list.Items {
		p := &list.Items[i]
		if strings.HasPrefix(p.Name, "tessera-device-plugin-") && p.DeletionTimestamp == nil {
			return p, nil
		}
	}
	return nil, fmt.Errorf("no device plugin pod on %s", testCluster.RealNodeName)
}

// killDevicePlugin deletes the device plugin pod with no grace (the process
// gets SIGKILL), waits for the DaemonSet's replacement to be ready and
// returns how long the node was without a plugin.
func killDevicePlugin(ctx context.Context, t *testing.T, e *scenario.Env) time.Duration {
	t.Helper()
	return killNodeAgent(ctx, t, e, testCluster.WaitForTessera)
}

// killNodeAgent is killDevicePlugin with ready meaning what ready says
// (WaitForTessera, or WaitForTesseraDRA for the DRA driver).
func killNodeAgent(ctx context.Context, t *testing.T, e *scenario.Env, ready func(context.Context, time.Duration) error) time.Duration {
	t.Helper()
	old, err := devicePluginPod(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.Client.CoreV1().Pods(old.Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
		t.Fatalf("killing the device plugin: %v", err)
	}
	waitFor(ctx, t, "a new device plugin pod ready", 200*time.Millisecond, 2*time.Minute, func(ctx context.Context) (bool, string) {
		p, err := devicePluginPod(ctx, e)
		if err != nil {
			return false, err.Error()
		}
		return p.UID != old.UID && scenario.Ready(p), fmt.Sprintf("%s ready=%t", p.Name, scenario.Ready(p))
	})
	// With hostNetwork the readiness probe may still have reached the
	// killed process: wait until only one plugin process is left and its
	// metrics port answers.
	waitFor(ctx, t, "one device plugin process serving on "+devicePluginMetrics, 100*time.Millisecond, time.Minute, func(ctx context.Context) (bool, string) {
		if pids := devicePluginProcesses(); len(pids) != 1 {
			return false, fmt.Sprintf("plugin processes %v", pids)
		}
		resp, err := http.Get(devicePluginMetrics + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	if err := ready(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// devicePluginProcesses lists the PIDs of running (not zombie) device
// plugin servers.
func devicePluginProcesses() []int {
	return processes(func(pid int, args []string) bool {
		if len(args) < 2 || !strings.HasSuffix(args[0], "tessera-device-plugin") || args[1] != "serve" {
			return false
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return err == nil && !strings.Contains(string(st), ") Z ")
	})
}

// holdSlices runs one probe pod holding n slices on the real node.
func holdSlices(ctx context.Context, t *testing.T, e *scenario.Env, ns, name string, n int) corev1.Pod {
	t.Helper()
	pod := scenario.SlicePod(ns, name, n, scenario.PodOptions{NodeSelector: map[string]string{scenario.RealNodeLabel: "true"},
		Labels: map[string]string{"tessera.dev/fault": name}})
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods, err := e.WaitPods(ctx, ns, "tessera.dev/fault="+name, 1, 2*time.Minute, "running with its allocation reported", func(p *corev1.Pod) bool {
		return scenario.Running(p) && p.Annotations[api.AnnotationSlicesAllocated] != ""
	})
	if err != nil {
		t.Fatal(err)
	}
	return pods[0]
}

// freeRealNode deletes the namespace's pods and waits until they are gone,
// so the next test finds every slice of the real node free.
func freeRealNode(t *testing.T, e *scenario.Env, ns string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.DeleteAndWait(ctx, ns, "", time.Minute); err != nil {
		t.Errorf("freeing the real node: %v", err)
	}
}

// TestFaultDevicePluginKilled kills the device plugin while pods hold
// slices. The running pods keep exactly their slices, the new plugin
// rebuilds its view from the kubelet (PodResources + the kubelet's
// checkpoint) and the API, and a pod admitted afterwards gets slices nobody
// holds.
func TestFaultDevicePluginKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "fault-dp")
	defer freeRealNode(t, e, ns)
	before := []corev1.Pod{holdSlices(ctx, t, e, ns, "a", 2), holdSlices(ctx, t, e, ns, "b", 4)}

	down := killDevicePlugin(ctx, t, e)
	figure(t, "device_plugin_restart_to_ready_seconds", down.Seconds(), "s")

	// The running pods are untouched: same container, same slices.
	held := map[api.SliceID]string{}
	for _, b := range before {
		p, err := e.Client.CoreV1().Pods(ns).Get(ctx, b.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !scenario.Running(p) || p.Status.ContainerStatuses[0].RestartCount != 0 {
			t.Errorf("pod %s disturbed by the plugin restart: phase %s, restarts %d", p.Name, p.Status.Phase, p.Status.ContainerStatuses[0].RestartCount)
		}
		if got, want := p.Annotations[api.AnnotationSlicesAllocated], b.Annotations[api.AnnotationSlicesAllocated]; got != want {
			t.Errorf("pod %s: allocation %q after restart, %q before", p.Name, got, want)
		}
		ids, err := scenario.Slices(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			held[id] = p.Name
		}
	}
	// A pod admitted by the new plugin gets free slices only.
	c := holdSlices(ctx, t, e, ns, "c", 4)
	ids, err := api.ParseSliceList(c.Annotations[api.AnnotationSlicesAllocated])
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if other, dup := held[id]; dup {
			t.Errorf("slice %s double-allocated: to %s before the restart and to %s after", id, other, c.Name)
		}
	}
	if n, err := realNodeAllocatable(ctx, e); err != nil || n != realNodeGPUs*slicesPerGPU {
		t.Errorf("allocatable after restart = %d (%v), want %d", n, err, realNodeGPUs*slicesPerGPU)
	}
}

// TestFaultKubeletRestart restarts the real node's kubelet while a pod holds
// slices: the plugin sees the new kubelet socket and registers again, the
// kubelet keeps the pod's devices from its checkpoint, and the node
// advertises its full capacity again. The figure is the time from the
// restart to full capacity.
func TestFaultKubeletRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "fault-kubelet")
	defer freeRealNode(t, e, ns)
	held := holdSlices(ctx, t, e, ns, "held", 2)
	regsBefore := pluginRegistrations(ctx, t)
	full := realNodeGPUs * slicesPerGPU

	// Watch the kubelet's own view (PodResources GetAllocatableResources):
	// the node object is only refreshed with the next status update.
	type sample struct {
		at    time.Duration
		count int
		err   error
	}
	samples := make(chan sample, 1<<16)
	// lastAsked is when (since start) the sampler last began asking.
	var lastAsked atomic.Int64
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	start := time.Now()
	go func() {
		defer close(samples)
		// One sample, then 20 ms, then the next, until stopWatch.
		wait.UntilWithContext(watchCtx, func(ctx context.Context) {
			asked := time.Since(start)
			n, err := kubeletAllocatable(ctx)
			if ctx.Err() != nil {
				return // cut off by the stop below, not a kubelet outage
			}
			samples <- sample{time.Since(start), n, err}
			lastAsked.Store(int64(asked))
		}, 20*time.Millisecond)
	}()
	if err := testCluster.RestartKubelet(ctx); err != nil {
		t.Fatalf("restarting the kubelet: %v", err)
	}
	restarted := time.Since(start)
	waitFor(ctx, t, "the device plugin registered with the restarted kubelet", 50*time.Millisecond, 2*time.Minute, func(ctx context.Context) (bool, string) {
		n := pluginRegistrations(ctx, t)
		return n > regsBefore, fmt.Sprintf("registrations %v, %v before", n, regsBefore)
	})
	registered := time.Since(start)
	waitAllocatable(ctx, t, e, int64(full), 2*time.Minute)
	if err := testCluster.WaitForTessera(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	// Capacity back: the first moment, after the kubelet went away, that
	// the new kubelet reports every slice allocatable again. Stop the
	// sampler only once it has asked the kubelet after Tessera was ready,
	// so its samples reach past the moment capacity came back.
	settled := time.Since(start)
	waitFor(ctx, t, "a kubelet allocatable sample asked for after Tessera was ready", 20*time.Millisecond, 30*time.Second, func(context.Context) (bool, string) {
		asked := time.Duration(lastAsked.Load())
		return asked >= settled, fmt.Sprintf("last sample asked for at %s, Tessera ready at %s", asked, settled)
	})
	stopWatch()
	var down bool
	var back time.Duration
	for s := range samples {
		switch {
		case s.err != nil || s.count < full:
			down, back = true, 0
		case down && back == 0:
			back = s.at
		}
	}
	if !down || back == 0 {
		t.Errorf("the kubelet's allocatable slices never dropped and came back (down %t, back %s)", down, back)
	}
	figure(t, "kubelet_restart_seconds", restarted.Seconds(), "s")
	figure(t, "kubelet_restart_to_plugin_registered_seconds", registered.Seconds(), "s")
	figure(t, "kubelet_restart_to_capacity_back_seconds", back.Seconds(), "s")

	p, err := e.Client.CoreV1().Pods(ns).Get(ctx, held.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !scenario.Running(p) || p.Annotations[api.AnnotationSlicesAllocated] != held.Annotations[api.AnnotationSlicesAllocated] {
		t.Errorf("pod %s after kubelet restart: phase %s, allocation %q (was %q)", p.Name, p.Status.Phase,
			p.Annotations[api.AnnotationSlicesAllocated], held.Annotations[api.AnnotationSlicesAllocated])
	}
	// New work is admitted after the restart, on slices nobody holds.
	c := holdSlices(ctx, t, e, ns, "after", 2)
	if c.Annotations[api.AnnotationSlicesAllocated] == held.Annotations[api.AnnotationSlicesAllocated] {
		t.Errorf("pod admitted after the restart got the held pod's slices %s", c.Annotations[api.AnnotationSlicesAllocated])
	}
}

// kubeletAllocatable counts the slices the kubelet itself considers
// allocatable (PodResources v1 GetAllocatableResources).
func kubeletAllocatable(ctx context.Context) (int, error) {
	conn, err := grpc.NewClient("unix://"+testCluster.PodResourcesSocket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := podresourcesv1.NewPodResourcesListerClient(conn).GetAllocatableResources(ctx, &podresourcesv1.AllocatableResourcesRequest{})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range resp.GetDevices() {
		if d.GetResourceName() == api.ResourceName {
			n += len(d.GetDeviceIds())
		}
	}
	return n, nil
}

// pluginRegistrations reads the device plugin's registration counter.
func pluginRegistrations(ctx context.Context, t *testing.T) float64 {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, devicePluginMetrics+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "tessera_deviceplugin_kubelet_registrations_total "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// setDevicePluginConfig replaces the plugin's config and restarts the
// plugin so the new config is read now (the kubelet refreshes ConfigMap
// volumes only about once a minute).
func setDevicePluginConfig(ctx context.Context, t *testing.T, e *scenario.Env, cfg string) {
	t.Helper()
	cm, err := e.Client.CoreV1().ConfigMaps(cluster.TesseraNamespace).Get(ctx, devicePluginConfig, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["config.yaml"] = cfg
	if _, err := e.Client.CoreV1().ConfigMaps(cluster.TesseraNamespace).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	killDevicePlugin(ctx, t, e)
}

// podGroupCondition returns the PodGroup's GPUHealthy condition status.
func podGroupCondition(ctx context.Context, e *scenario.Env, ns, name string) (status, message string) {
	u, err := e.Dynamic.Resource(scenario.PodGroupResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err.Error()
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == scheduler.ConditionGPUHealthy {
			s, _ := m["status"].(string)
			msg, _ := m["message"].(string)
			return s, msg
		}
	}
	return "", ""
}

// TestFaultXid injects a critical Xid into a GPU held by a running gang
// through the mock NVML: the GPU's slices turn Unhealthy (inventory and
// allocatable), the scheduler reports it on the gang (Warning event,
// PodGroup condition GPUHealthy=False, the default unhealthyGangAction),
// and after the quiet period the GPU is Healthy again and so is the gang.
func TestFaultXid(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e := env(t)
	cm, err := e.Client.CoreV1().ConfigMaps(cluster.TesseraNamespace).Get(ctx, devicePluginConfig, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	original := cm.Data["config.yaml"]
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := testCluster.Kubectl(context.Background(), "logs", "-n", cluster.TesseraNamespace, "deploy/tessera-scheduler", "--tail=40")
			t.Logf("scheduler log:\n%s", logs)
		}
	})
	// A short quiet period so recovery is seen in seconds, not minutes.
	setDevicePluginConfig(ctx, t, e, strings.TrimRight(original, "\n")+"\nhealth:\n  recheckInterval: 1s\n  recoveryQuietPeriod: 5s\n")
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		setDevicePluginConfig(ctx, t, e, original)
	}()

	ns := createNamespace(ctx, t, "fault-xid")
	defer freeRealNode(t, e, ns)
	pods, err := e.Gang(ctx, ns, "tp", 2, slicesPerGPU, "", scenario.PodOptions{NodeSelector: map[string]string{scenario.RealNodeLabel: "true"}})
	if err != nil {
		t.Fatal(err)
	}
	running, err := e.WaitPods(ctx, ns, scenario.GangSelector("tp"), len(pods), 2*time.Minute, "running", scenario.Running)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := scenario.Slices(&running[0])
	if err != nil {
		t.Fatal(err)
	}
	gpu := ids[0].GPU
	full := int64(realNodeGPUs * slicesPerGPU)

	start := time.Now()
	resp, err := http.Post(fmt.Sprintf("%s/debug/fake/xid?gpu=%s&xid=79", devicePluginMetrics, gpu), "text/plain", nil)
	if err != nil {
		t.Fatalf("injecting Xid 79: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("injecting Xid 79: %s", resp.Status)
	}
	waitAllocatable(ctx, t, e, full-slicesPerGPU, time.Minute)
	figure(t, "xid_to_capacity_drop_seconds", time.Since(start).Seconds(), "s")
	if healthy, ok := gpuHealthy(realNodeInventory(ctx, t, e), gpu); !ok || healthy {
		t.Errorf("inventory reports %s healthy=%t (listed %t) after Xid 79", gpu, healthy, ok)
	}
	var msg string
	waitFor(ctx, t, "PodGroup condition "+scheduler.ConditionGPUHealthy+"=False", 200*time.Millisecond, time.Minute, func(ctx context.Context) (bool, string) {
		var st string
		st, msg = podGroupCondition(ctx, e, ns, "tp")
		return st == string(metav1.ConditionFalse), st + " " + msg
	})
	figure(t, "xid_to_gang_condition_seconds", time.Since(start).Seconds(), "s")
	if !strings.Contains(msg, gpu) || !strings.Contains(msg, running[0].Name) {
		t.Errorf("condition message %q does not name GPU %s and pod %s", msg, gpu, running[0].Name)
	}
	waitEvent(ctx, t, e, ns, "tp", "GPUUnhealthy")
	// The default action keeps the gang running.
	for _, p := range running {
		got, err := e.Client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil || got.DeletionTimestamp != nil {
			t.Errorf("pod %s was removed under unhealthyGangAction Event: %v", p.Name, err)
		}
	}

	recovered := time.Now()
	waitAllocatable(ctx, t, e, full, time.Minute)
	waitFor(ctx, t, "PodGroup condition "+scheduler.ConditionGPUHealthy+"=True again after recovery", 200*time.Millisecond, time.Minute, func(ctx context.Context) (bool, string) {
		st, msg := podGroupCondition(ctx, e, ns, "tp")
		return st == string(metav1.ConditionTrue), st + " " + msg
	})
	figure(t, "xid_recovery_to_gang_healthy_seconds", time.Since(recovered).Seconds(), "s")
	if healthy, _ := gpuHealthy(realNodeInventory(ctx, t, e), gpu); !healthy {
		t.Errorf("inventory still reports %s Unhealthy after recovery", gpu)
	}
}

func gpuHealthy(inv *api.Inventory, uuid string) (healthy, ok bool) {
	for _, g := range inv.GPUs {
		if g.UUID == uuid {
			return g.Healthy, true
		}
	}
	return false, false
}

// waitEvent waits for an event with reason on the named object.
func waitEvent(ctx context.Context, t *testing.T, e *scenario.Env, ns, name, reason string) {
	t.Helper()
	waitFor(ctx, t, fmt.Sprintf("a %s event on %s/%s", reason, ns, name), 300*time.Millisecond, time.Minute, func(ctx context.Context) (bool, string) {
		list, err := e.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, ev := range list.Items {
			if ev.Reason == reason && ev.Regarding.Name == name {
				return true, ""
			}
			seen = append(seen, ev.Reason+" on "+ev.Regarding.Name)
		}
		return false, strings.Join(seen, ", ")
	})
}

// describePods says why a namespace's pods are where they are: phase,
// reason and message, each container's last state, and the last log lines.
func describePods(ctx context.Context, e *scenario.Env, ns string) string {
	list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, p := range list.Items {
		fmt.Fprintf(&b, "%s: %s %s %s\n", p.Name, p.Status.Phase, p.Status.Reason, p.Status.Message)
		for _, c := range p.Status.ContainerStatuses {
			if term := c.State.Terminated; term != nil {
				fmt.Fprintf(&b, "  %s exited %d: %s %s\n", c.Name, term.ExitCode, term.Reason, term.Message)
			}
		}
		tail := int64(15)
		if logs, err := e.Client.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tail}).DoRaw(ctx); err == nil {
			fmt.Fprintf(&b, "  log:\n%s\n", logs)
		}
	}
	return b.String()
}

// shardProcess finds the host PID of a shard-server rank by its command
// line (the container shares the host's PID view from /proc).
func shardProcess(httpPort int) (int, error) {
	needle := fmt.Sprintf("127.0.0.1:%d", httpPort)
	pids := processes(func(_ int, args []string) bool {
		return strings.HasSuffix(args[0], "tessera-shard-server") && strings.Contains(strings.Join(args, "\x00"), "\x00--listen\x00"+needle+"\x00")
	})
	if len(pids) == 0 {
		return 0, fmt.Errorf("no shard server listening on %s", needle)
	}
	return pids[0], nil
}

// TestFaultShardRankKilled SIGKILLs rank 1 of a serving shard-server gang.
// The group must notice (rank 0 stops being ready and exits: a tensor-
// parallel group cannot go on without a rank), and once recreated as a
// whole — as LeaderWorkerSet's RecreateGroupOnPodRestart does, here by the
// test — place whole again and answer. The figure is kill → serving.
func TestFaultShardRankKilled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "fault-rank")
	defer freeRealNode(t, e, ns)
	// Rank r serves HTTP on base+r; the collective listens on base+2.
	base := freePortBlock(t, 3)
	g := scenario.ShardGang{Namespace: ns, Name: "tp2", Ranks: 2, Slices: 2, HTTPPort: base, CollectivePort: base + 2}
	if _, err := g.Create(ctx, e); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitPods(ctx, ns, scenario.GangSelector("tp2"), 2, 3*time.Minute, "ready", scenario.Ready); err != nil {
		t.Fatalf("%v\n%s", err, describePods(ctx, e, ns))
	}
	if _, err := scenario.Complete(ctx, g.URL(), "before the fault", 8); err != nil {
		t.Fatal(err)
	}
	pid, err := shardProcess(g.HTTPPort + 1)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing rank 1 (pid %d): %v", pid, err)
	}
	// The whole group turns unready: rank 1 is gone, rank 0 exits once its
	// heartbeat finds the rank lost.
	_, err = e.WaitPods(ctx, ns, scenario.GangSelector("tp2"), 2, 2*time.Minute, "failed", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodFailed
	})
	if err != nil {
		t.Fatalf("the group did not notice the lost rank: %v", err)
	}
	figure(t, "rank_kill_to_group_unready_seconds", time.Since(start).Seconds(), "s")

	// Recreate the group as a whole; the scheduler places it whole again.
	if err := e.DeleteAndWait(ctx, ns, scenario.GangSelector("tp2"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := g.CreatePods(ctx, e); err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitPods(ctx, ns, scenario.GangSelector("tp2"), 2, 3*time.Minute, "ready", scenario.Ready); err != nil {
		t.Fatalf("recreated group: %v\n%s", err, describePods(ctx, e, ns))
	}
	waitFor(ctx, t, "the recreated group serving", 200*time.Millisecond, time.Minute, func(ctx context.Context) (bool, string) {
		_, err := scenario.Complete(ctx, g.URL(), "after the fault", 8)
		return err == nil, fmt.Sprint(err)
	})
	figure(t, "rank_kill_to_serving_again_seconds", time.Since(start).Seconds(), "s")
}
