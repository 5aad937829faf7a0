package scenario

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
)

// DRADemoNamespace holds the demo's DRA pod.
const DRADemoNamespace = "tessera-demo-dra"

// RunDRADemo is the demo's DRA step, on a cluster whose real node's agent
// already serves its GPUs as DRA driver (cluster.InstallTesseraDRA): the
// shipped claim template tp-rank-2-slices (examplesPath,
// manifests/examples/dra-claims.yaml), applied unchanged, and one pod on
// the real node that uses it. Tessera plans the pod's 2 slices, the in-tree
// allocator allocates the claim exactly those, the kubelet has the node
// agent prepare it (a CDI spec) and the container's environment shows
// them. It fails unless plan, allocation and environment agree.
func RunDRADemo(ctx context.Context, e *Env, out io.Writer, examplesPath string) error {
	ns := DRADemoNamespace
	if err := e.recreateNamespace(ctx, ns); err != nil {
		return err
	}
	pin := []byte(`{"metadata":{"annotations":{"scheduler.alpha.kubernetes.io/node-selector":"` + RealNodeLabel + `=true"}}}`)
	if _, err := e.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, pin, metav1.PatchOptions{}); err != nil {
		return err
	}
	tmpl, err := exampleTemplate(examplesPath, "tp-rank-2-slices")
	if err != nil {
		return err
	}
	if _, err := e.Client.ResourceV1().ResourceClaimTemplates(ns).Create(ctx, tmpl, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("claim template %s: %w", tmpl.Name, err)
	}
	fmt.Fprintf(out, "creating: pod tp-rank on the real node with a claim from template %s (%s: 2 slices of one GPU)\n", tmpl.Name, examplesPath)
	pod := SlicePod(ns, "tp-rank", 0, PodOptions{})
	c := &pod.Spec.Containers[0]
	c.Resources = corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: "gpu"}}}
	pod.Spec.ResourceClaims = []corev1.PodResourceClaim{{Name: "gpu", ResourceClaimTemplateName: ptr.To(tmpl.Name)}}
	start := time.Now()
	if _, err := e.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return err
	}
	pods, err := e.WaitPods(ctx, ns, "", 1, 2*time.Minute, "running", Running)
	if err != nil {
		return err
	}
	p := pods[0]
	fmt.Fprintf(out, "pod tp-rank running on %s in %s\n", p.Spec.NodeName, time.Since(start).Round(100*time.Millisecond))
	planned := p.Annotations[api.AnnotationSliceAssignment]
	if len(p.Status.ResourceClaimStatuses) == 0 || p.Status.ResourceClaimStatuses[0].ResourceClaimName == nil {
		return fmt.Errorf("pod tp-rank has no claim made from its template")
	}
	claim, err := e.Client.ResourceV1().ResourceClaims(ns).Get(ctx, *p.Status.ResourceClaimStatuses[0].ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if claim.Status.Allocation == nil {
		return fmt.Errorf("claim %s of the running pod is not allocated", claim.Name)
	}
	var devices []string
	for _, r := range claim.Status.Allocation.Devices.Results {
		devices = append(devices, r.Driver+"/"+r.Pool+"/"+r.Device)
	}
	env, err := e.ProbeEnv(ctx, ns, p.Name)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "  Tessera planned (%s): %s\n", api.AnnotationSliceAssignment, planned)
	fmt.Fprintf(out, "  claim %s allocated:   %s\n", claim.Name, strings.Join(devices, ", "))
	fmt.Fprintf(out, "  container env:        %s=%s %s=%s %s=%s\n", api.EnvVisibleDevices, env[api.EnvVisibleDevices],
		api.EnvSlices, env[api.EnvSlices], api.EnvMemoryLimitMiB, env[api.EnvMemoryLimitMiB])
	ids, err := api.ParseSliceList(planned)
	if err != nil || len(ids) != 2 {
		return fmt.Errorf("pod tp-rank: planned slices %q, want 2 (%v)", planned, err)
	}
	if env[api.EnvSlices] != api.FormatSliceList(ids) || env[api.EnvVisibleDevices] != ids[0].GPU {
		return fmt.Errorf("pod tp-rank: the container got %s=%s %s=%s, Tessera planned %s", api.EnvSlices, env[api.EnvSlices], api.EnvVisibleDevices, env[api.EnvVisibleDevices], planned)
	}
	fmt.Fprintln(out, "plan, claim allocation and container environment agree")
	return nil
}

// exampleTemplate reads the named ResourceClaimTemplate from a manifest file.
func exampleTemplate(path, name string) (*resourceapi.ResourceClaimTemplate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	for {
		var t resourceapi.ResourceClaimTemplate
		if err := dec.Decode(&t); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%s has no ResourceClaimTemplate %s", path, name)
			}
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if t.Kind == "ResourceClaimTemplate" && t.Name == name {
			return &t, nil
		}
	}
}

// ProbeEnv waits for the probe's whole output (its last line is
// "tessera-e2e-probe ok") and parses its "env K=V" lines.
func (e *Env) ProbeEnv(ctx context.Context, ns, pod string) (map[string]string, error) {
	var logs []byte
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		logs, err = e.Client.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{}).DoRaw(ctx)
		return err == nil && bytes.Contains(logs, []byte("tessera-e2e-probe ok")), nil
	})
	if err != nil {
		return nil, fmt.Errorf("the probe in %s/%s did not print its environment: %w (log: %s)", ns, pod, err, logs)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(logs), "\n") {
		if kv, ok := strings.CutPrefix(line, "env "); ok {
			k, v, _ := strings.Cut(kv, "=")
			out[k] = v
		}
	}
	return out, nil
}
