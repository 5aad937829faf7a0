package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/e2e/cluster"
)

// Kueue's pod integration: labels and annotation that put a pod in a queue
// and in a pod group Kueue admits as one workload.
const (
	kueueQueueLabel      = "kueue.x-k8s.io/queue-name"
	kueueGroupLabel      = "kueue.x-k8s.io/pod-group-name"
	kueueGroupCountAnnot = "kueue.x-k8s.io/pod-group-total-count"
	kueueAdmissionGate   = "kueue.x-k8s.io/admission"
	// kueueRetriableAnnot "false" makes a failed pod end its whole group
	// (the workload finishes and its quota is released): what a
	// tensor-parallel gang needs, since it cannot run with a rank missing.
	kueueRetriableAnnot = "kueue.x-k8s.io/retriable-in-group"
	// kueueNamespaceLabel marks the namespaces whose pods Kueue's webhooks
	// see in this test, so a stopped Kueue never blocks other tests' pods.
	kueueNamespaceLabel = "tessera.dev/it-kueue"
)

var (
	clusterQueueGVR   = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "clusterqueues"}
	localQueueGVR     = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "localqueues"}
	resourceFlavorGVR = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "resourceflavors"}
	workloadGVR       = schema.GroupVersionResource{Group: "kueue.x-k8s.io", Version: "v1beta2", Resource: "workloads"}
)

// TestKueueQuotas runs the real Kueue controller (v0.17.0, built by make
// tools from the Go module proxy, with its CRDs and webhooks from the same
// module) beside Tessera: two namespaces with slice quotas (ClusterQueues of
// 32 and 16 tessera.dev/gpu-slice), gangs of 4 ranks × 4 slices submitted
// as Kueue pod groups that are also Tessera gangs (a PodGroup). Kueue admits
// what fits the quota and holds the rest behind its scheduling gate;
// Tessera places every admitted gang whole; over-quota gangs hold no
// slices; when an admitted gang goes, a waiting one is admitted and placed;
// nothing leaks.
func TestKueueQuotas(t *testing.T) {
	ensureScheduler(t)
	ctx := context.Background()
	startKueue(t, ctx)
	const ranks, slicesPerRank = 4, 4
	quotas := map[string]int{"team-a": 32, "team-b": 16}
	for ns, quota := range quotas {
		nsObj := &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{kueueNamespaceLabel: "true"}}}
		if _, err := env.client.CoreV1().Namespaces().Create(ctx, nsObj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx := context.Background()
			list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err == nil {
				var names []string
				for _, p := range list.Items {
					names = append(names, p.Name)
				}
				terminatePods(t, ctx, ns, names)
			}
			cleanupNamespace(t, ctx, ns)
		})
		if ns == "team-a" {
			continue // from manifests/examples/kueue-quota.yaml, below
		}
		createUnstructured(t, ctx, clusterQueueGVR, "", map[string]any{
			"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": map[string]any{"name": "cq-" + ns},
			"spec": map[string]any{
				"namespaceSelector": map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": ns}},
				"resourceGroups": []any{map[string]any{
					"coveredResources": []any{api.ResourceName},
					"flavors": []any{map[string]any{"name": "tessera-slices", "resources": []any{
						map[string]any{"name": api.ResourceName, "nominalQuota": fmt.Sprint(quota)}}}},
				}},
			}})
		createUnstructured(t, ctx, localQueueGVR, ns, map[string]any{
			"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": map[string]any{"name": "lq", "namespace": ns},
			"spec": map[string]any{"clusterQueue": "cq-" + ns}})
	}
	// team-a's flavor, queues and first gang, a1, exactly as the example
	// an admin starts from.
	applyExample(t, ctx, "../../manifests/examples/kueue-quota.yaml")
	// Three gangs of 16 slices for team-a's 32, two for team-b's 16.
	gangs := map[string][]string{"team-a": {"a1", "a2", "a3"}, "team-b": {"b1", "b2"}}
	for ns, names := range gangs {
		for _, g := range names {
			if g == "a1" {
				continue
			}
			createPodGroup(t, ctx, ns, g, ranks, 120, map[string]string{api.AnnotationTopologyRequired: api.LabelClique})
			for i := range ranks {
				p := gpuPod(ns, fmt.Sprintf("%s-%d", g, i), slicesPerRank, map[string]string{
					kueueQueueLabel: "lq", kueueGroupLabel: g, api.LabelPodGroup: g})
				p.Annotations = map[string]string{kueueGroupCountAnnot: fmt.Sprint(ranks), kueueRetriableAnnot: "false"}
				createPods(t, ctx, p)
			}
		}
	}
	// Kueue's webhook gated every pod at creation.
	for ns := range gangs {
		list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range list.Items {
			if !hasGate(&p, kueueAdmissionGate) && p.Spec.NodeName == "" {
				// Admission may already have removed it; a pod never gated
				// and not bound means the webhook did not run.
				if !admitted(t, ctx, ns, p.Labels[kueueGroupLabel]) {
					t.Fatalf("pod %s/%s has no %s gate and its workload is not admitted: Kueue's webhook did not see it", ns, p.Name, kueueAdmissionGate)
				}
			}
		}
	}

	// Admitted: 2 gangs in team-a, 1 in team-b, each placed whole; the
	// others wait in Kueue, gated, holding nothing.
	want := map[string]int{"team-a": 2, "team-b": 1}
	placed := waitKueueState(t, ctx, gangs, want, ranks, 90*time.Second)
	t.Logf("admitted and placed whole: %v", placed)
	waitNoLeak(t, ctx)

	// Free team-a's quota by deleting one admitted gang: the waiting one is
	// admitted and placed whole.
	gone := placed["team-a"][0]
	var names []string
	for i := range ranks {
		names = append(names, fmt.Sprintf("%s-%d", gone, i))
	}
	terminatePods(t, ctx, "team-a", names)
	gangs["team-a"] = slices.DeleteFunc(gangs["team-a"], func(g string) bool { return g == gone })
	placed = waitKueueState(t, ctx, gangs, map[string]int{"team-a": 2, "team-b": 1}, ranks, 90*time.Second)
	t.Logf("after %s left: admitted and placed whole: %v", gone, placed)
	waitNoLeak(t, ctx)
}

// waitKueueState waits until, per namespace, want gangs are bound whole and
// the rest have no pod bound and every pod gated, then holds that for 2 s
// (nothing more gets placed, nothing partial). It returns the bound gangs.
func waitKueueState(t *testing.T, ctx context.Context, gangs map[string][]string, want map[string]int, ranks int, timeout time.Duration) map[string][]string {
	t.Helper()
	var last string
	check := func() (map[string][]string, string) {
		placed := map[string][]string{}
		var problems []string
		for ns, names := range gangs {
			list, err := env.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, err.Error()
			}
			bound, gated, total := map[string]int{}, map[string]int{}, map[string]int{}
			for _, p := range list.Items {
				if p.DeletionTimestamp != nil {
					continue
				}
				g := p.Labels[kueueGroupLabel]
				total[g]++
				if p.Spec.NodeName != "" {
					bound[g]++
				}
				if hasGate(&p, kueueAdmissionGate) {
					gated[g]++
				}
			}
			for _, g := range names {
				switch {
				case bound[g] == ranks:
					placed[ns] = append(placed[ns], g)
				case bound[g] > 0:
					problems = append(problems, fmt.Sprintf("%s/%s: %d of %d bound", ns, g, bound[g], ranks))
				case gated[g] != total[g]:
					problems = append(problems, fmt.Sprintf("%s/%s: %d of %d pods gated, none bound", ns, g, gated[g], total[g]))
				}
			}
			if len(placed[ns]) != want[ns] {
				problems = append(problems, fmt.Sprintf("%s: %d gangs placed, want %d", ns, len(placed[ns]), want[ns]))
			}
			slices.Sort(placed[ns])
		}
		return placed, strings.Join(problems, "; ")
	}
	var placed map[string][]string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		placed, last = check()
		return last == "", nil
	})
	if err != nil {
		t.Fatalf("Kueue and Tessera did not settle in %s: %s", timeout, last)
	}
	// Then hold it: what must not happen (another gang admitted or placed,
	// one partly bound) has no event to wait for, so the state is checked
	// again every 250 ms for 2 s, which spans several of Kueue's and the
	// scheduler's retry rounds (backoffSeconds 1 in testArgs).
	for range 8 {
		time.Sleep(250 * time.Millisecond)
		if p, problem := check(); problem != "" || fmt.Sprint(p) != fmt.Sprint(placed) {
			t.Fatalf("settled state changed: %v, %s (was %v)", p, problem, placed)
		}
	}
	return placed
}

// terminatePods deletes the pods and, doing the kubelet's part that the
// simulated nodes skip, marks each one Failed: Kueue keeps its finalizer on
// a pod of a group until the pod is terminal, and finishes an unretriable
// group (releasing its quota) once every pod is.
func terminatePods(t testing.TB, ctx context.Context, ns string, names []string) {
	t.Helper()
	for _, name := range names {
		if err := env.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			p, err := env.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			if err != nil {
				return false, nil
			}
			if p.Status.Phase == v1.PodFailed || p.Status.Phase == v1.PodSucceeded {
				return true, nil
			}
			p.Status.Phase = v1.PodFailed
			p.Status.Reason, p.Status.Message = "Terminated", "deleted (the test plays the kubelet)"
			_, err = env.client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
			return err == nil, nil
		})
		if err != nil {
			t.Fatalf("marking %s/%s Failed: %v", ns, name, err)
		}
	}
}

func hasGate(p *v1.Pod, name string) bool {
	for _, g := range p.Spec.SchedulingGates {
		if g.Name == name {
			return true
		}
	}
	return false
}

// admitted reports whether the Kueue workload of pod group g in ns has an
// admission.
func admitted(t *testing.T, ctx context.Context, ns, g string) bool {
	list, err := env.dyn.Resource(workloadGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range list.Items {
		if !strings.Contains(w.GetName(), g) {
			continue
		}
		if _, ok, _ := unstructured.NestedMap(w.Object, "status", "admission"); ok {
			return true
		}
	}
	return false
}

// applyExample creates every object of a multi-document manifest, as is
// (an existing Namespace is kept), and deletes the cluster-scoped ones at
// the end (the namespaced ones go with their namespace's cleanup).
func applyExample(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	applyExampleIn(t, ctx, path, "")
}

// applyExampleIn is applyExample with ns for the namespaced objects that
// name no namespace (as kubectl apply -n does).
func applyExampleIn(t *testing.T, ctx context.Context, path, ns string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	gvrs := map[string]schema.GroupVersionResource{
		"Namespace":               {Version: "v1", Resource: "namespaces"},
		"Pod":                     {Version: "v1", Resource: "pods"},
		"PodGroup":                podGroupGVR,
		"ResourceFlavor":          resourceFlavorGVR,
		"ClusterQueue":            clusterQueueGVR,
		"LocalQueue":              localQueueGVR,
		"LeaderWorkerSet":         lwsGVR,
		"HorizontalPodAutoscaler": {Group: "autoscaling", Version: "v2", Resource: "horizontalpodautoscalers"},
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			break
		}
		if len(u.Object) == 0 {
			continue
		}
		gvr, ok := gvrs[u.GetKind()]
		if !ok {
			t.Fatalf("%s: unexpected kind %s", path, u.GetKind())
		}
		if u.GetKind() == "Namespace" {
			continue // created by the test with the webhook label
		}
		if u.GetNamespace() == "" && ns != "" && u.GetKind() != "ResourceFlavor" && u.GetKind() != "ClusterQueue" {
			u.SetNamespace(ns)
		}
		createUnstructured(t, ctx, gvr, u.GetNamespace(), u.Object)
	}
}

func createUnstructured(t *testing.T, ctx context.Context, gvr schema.GroupVersionResource, ns string, obj map[string]any) {
	t.Helper()
	u := &unstructured.Unstructured{Object: obj}
	var err error
	if ns == "" {
		_, err = env.dyn.Resource(gvr).Create(ctx, u, metav1.CreateOptions{})
	} else {
		_, err = env.dyn.Resource(gvr).Namespace(ns).Create(ctx, u, metav1.CreateOptions{})
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating %s %s: %v", gvr.Resource, u.GetName(), err)
	}
	t.Cleanup(func() {
		if ns == "" {
			_ = env.dyn.Resource(gvr).Delete(context.Background(), u.GetName(), metav1.DeleteOptions{})
		} else {
			_ = env.dyn.Resource(gvr).Namespace(ns).Delete(context.Background(), u.GetName(), metav1.DeleteOptions{})
		}
	})
}

// startKueue installs Kueue's CRDs, starts its controller manager as a
// process against the test cluster (as admin; a real install uses Kueue's
// own RBAC) with the pod integration on and its webhook server on
// loopback, and registers its pod and Kueue-object webhooks by URL with a
// certificate made here (Kueue's internal certificate management names the
// in-cluster Service, which this cluster does not route to). Pod webhooks
// only see namespaces labelled kueueNamespaceLabel. Everything is undone
// at the end of the test.
func startKueue(t *testing.T, ctx context.Context) {
	t.Helper()
	tools := os.Getenv("TESSERA_TOOLS_DIR")
	bin := filepath.Join(tools, "kueue")
	cfgDir := filepath.Join(tools, "kueue-config")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("Kueue is not built (%v): run make tools", err)
	}
	if out, err := env.c.Kubectl(ctx, "apply", "--server-side", "-f", filepath.Join(cfgDir, "crds")); err != nil {
		t.Fatalf("installing Kueue's CRDs: %v\n%s", err, out)
	}
	if err := env.c.WaitCRDsEstablished(ctx, filepath.Join(cfgDir, "crds"), time.Minute); err != nil {
		t.Fatalf("Kueue's CRDs: %v", err)
	}
	if _, err := env.client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kueue-system"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certDir := filepath.Join(dir, "certs")
	caPEM := writeServingCert(t, certDir)
	port, probe := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
health:
  healthProbeBindAddress: "127.0.0.1:%d"
metrics:
  bindAddress: "0"
webhook:
  host: 127.0.0.1
  port: %d
  certDir: %s
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
manageJobsWithoutQueueName: false
integrations:
  frameworks: ["pod"]
`, probe, port, certDir)
	cfgPath := filepath.Join(dir, "kueue.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "kueue.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	// With its internal certificate management off, Kueue 0.17 reads the
	// metrics server's certificate from the fixed path
	// /etc/kueue/metrics/certs. It runs in a mount namespace of its own
	// whose /etc is the host's with a writable overlay from this test's
	// temp dir on top, so the certificate is there and the host's /etc is
	// not touched. Without root, a user namespace maps the caller to root.
	overlay := filepath.Join(dir, "etc")
	for _, d := range []string{"upper", "work"} {
		if err := os.MkdirAll(filepath.Join(overlay, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	script := fmt.Sprintf(`set -e
mount -t overlay overlay -o lowerdir=/etc,upperdir=%[1]s/upper,workdir=%[1]s/work /etc
mkdir -p /etc/kueue/metrics/certs
cp %[2]s/tls.crt %[2]s/tls.key /etc/kueue/metrics/certs/
exec %[3]s --config %[4]s --feature-gates=VisibilityOnDemand=false`, overlay, certDir, bin, cfgPath)
	args := []string{"--mount", "--propagation", "private"}
	if os.Geteuid() != 0 {
		args = append([]string{"--user", "--map-root-user"}, args...)
	}
	cmd := exec.Command("unshare", append(args, "--", "sh", "-c", script)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+env.c.Kubeconfig)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting Kueue under unshare (util-linux): %v", err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	logTail := func() string {
		b, _ := os.ReadFile(logPath)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		return strings.Join(lines[max(0, len(lines)-15):], "\n")
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logFile.Close()
		if t.Failed() {
			t.Logf("Kueue's log ends:\n%s", logTail())
		}
	})
	// Ready: its health probe answers and the webhook server takes TLS.
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		select {
		case <-done:
			return false, fmt.Errorf("kueue exited: %v", waitErr)
		default:
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe))
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, nil
		}
		conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	})
	if err != nil {
		t.Fatalf("Kueue not ready: %v\n%s", err, logTail())
	}
	registerKueueWebhooks(t, ctx, filepath.Join(cfgDir, "webhook.yaml"), fmt.Sprintf("https://127.0.0.1:%d", port), caPEM)
}

// registerKueueWebhooks creates Kueue's mutating and validating webhook
// configurations from its manifest, keeping the webhooks for pods and for
// Kueue's own objects and pointing them at url.
func registerKueueWebhooks(t *testing.T, ctx context.Context, path, url string, caPEM []byte) {
	t.Helper()
	onlyLabelled := &metav1.LabelSelector{MatchLabels: map[string]string{kueueNamespaceLabel: "true"}}
	remove, err := cluster.RegisterWebhooks(ctx, env.client, cluster.Webhooks{
		Manifest: path, BaseURL: url, CAPEM: caPEM,
		MutatingName: "tessera-it-kueue-mutating", ValidatingName: "tessera-it-kueue-validating",
		// Keep the webhooks for pods and for Kueue's own objects; limit the
		// pod ones to the labelled namespaces.
		Keep: func(servicePath string, sel cluster.WebhookSelectors) bool {
			pod := strings.HasSuffix(servicePath, "-v1-pod")
			if pod {
				*sel.Namespace = onlyLabelled
			}
			return pod || strings.Contains(servicePath, "-kueue-x-k8s-io-")
		},
	})
	if remove != nil {
		t.Cleanup(func() { _ = remove(context.Background()) })
	}
	if err != nil {
		t.Fatal(err)
	}
}

// writeServingCert writes tls.crt and tls.key for 127.0.0.1, signed by a
// fresh CA, into dir and returns the CA certificate (PEM).
func writeServingCert(t *testing.T, dir string) []byte {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tessera-it-kueue-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("tls.crt", "CERTIFICATE", der)
	write("tls.key", "EC PRIVATE KEY", keyDER)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
