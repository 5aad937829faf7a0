// Package scenario builds and watches the workloads Tessera's end-to-end
// tests and demo run: fractional pods, gangs of pods behind a PodGroup, and a
// tensor-parallel gang of shard servers. It is shared so that the demo shows
// exactly what the tests check.
package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	sched "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/api/podspec"
)

// Images of the local cluster (e2e/cluster.DefaultImages).
const (
	ProbeImage       = "localhost/tessera/e2e-probe:dev"
	ShardServerImage = "localhost/tessera/shard-server:dev"
	// RealNodeLabel selects the local cluster's real (kubelet) node.
	RealNodeLabel = "tessera.dev/real-node"
	// SimulatedLabel selects kwok nodes.
	SimulatedLabel = "tessera.dev/simulated"
)

// PodGroupResource is the scheduler-plugins PodGroup API.
var PodGroupResource = schema.GroupVersionResource{Group: "scheduling.x-k8s.io", Version: "v1alpha1", Resource: "podgroups"}

// Env is a client pair for one cluster.
type Env struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
}

// NewEnv makes clients from a REST config.
func NewEnv(cfg *rest.Config) (*Env, error) {
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Env{Client: c, Dynamic: d}, nil
}

// PodOptions tune the pods the builders make.
type PodOptions struct {
	NodeSelector map[string]string
	Image        string
	Args         []string
	Env          []corev1.EnvVar
	HostNetwork  bool
	// Gang names a scheduler-plugins PodGroup the pod belongs to.
	Gang   string
	Labels map[string]string
	// ReadinessPort, when set, adds an HTTP /readyz probe on 127.0.0.1.
	ReadinessPort int
}

// SlicePod returns a pod for tessera-scheduler asking for slices of GPU.
// Without an image it runs the probe, which prints its GPU environment and
// then waits, so the slices stay held.
func SlicePod(ns, name string, slices int, o PodOptions) *corev1.Pod {
	image, args := o.Image, o.Args
	if image == "" {
		image, args = ProbeImage, []string{"--wait"}
	}
	lbls := map[string]string{"app.kubernetes.io/part-of": "tessera-e2e"}
	for k, v := range o.Labels {
		lbls[k] = v
	}
	if o.Gang != "" {
		lbls[api.LabelPodGroup] = o.Gang
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: lbls},
		Spec: corev1.PodSpec{
			SchedulerName:                 api.SchedulerName,
			RestartPolicy:                 corev1.RestartPolicyNever,
			NodeSelector:                  o.NodeSelector,
			HostNetwork:                   o.HostNetwork,
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			Containers: []corev1.Container{{
				Name:            "main",
				Image:           image,
				Args:            args,
				Env:             o.Env,
				ImagePullPolicy: corev1.PullNever,
				Resources: corev1.ResourceRequirements{
					Limits: corev1.ResourceList{api.ResourceName: *resource.NewQuantity(int64(slices), resource.DecimalSI)},
				},
			}},
		},
	}
	if o.ReadinessPort != 0 {
		pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Host: "127.0.0.1", Path: "/readyz", Port: intOrString(o.ReadinessPort),
			}},
			PeriodSeconds: 1,
		}
	}
	return pod
}

// PodGroup returns a scheduler-plugins PodGroup; topologyRequired, when set,
// becomes the tessera.dev/topology-required annotation.
func PodGroup(ns, name string, minMember int, topologyRequired string) *sched.PodGroup {
	pg := &sched.PodGroup{
		TypeMeta:   metav1.TypeMeta{APIVersion: "scheduling.x-k8s.io/v1alpha1", Kind: "PodGroup"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       sched.PodGroupSpec{MinMember: int32(minMember), ScheduleTimeoutSeconds: ptr.To[int32](60)},
	}
	if topologyRequired != "" {
		pg.Annotations = map[string]string{api.AnnotationTopologyRequired: topologyRequired}
	}
	return pg
}

// CreatePodGroup creates pg through the dynamic client.
func (e *Env) CreatePodGroup(ctx context.Context, pg *sched.PodGroup) error {
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pg)
	if err != nil {
		return err
	}
	_, err = e.Dynamic.Resource(PodGroupResource).Namespace(pg.Namespace).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating PodGroup %s/%s: %w", pg.Namespace, pg.Name, err)
	}
	return nil
}

// GetPodGroup reads a PodGroup.
func (e *Env) GetPodGroup(ctx context.Context, ns, name string) (*sched.PodGroup, error) {
	u, err := e.Dynamic.Resource(PodGroupResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var pg sched.PodGroup
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &pg); err != nil {
		return nil, err
	}
	return &pg, nil
}

// Gang creates a PodGroup and its members: ranks pods of slices each.
func (e *Env) Gang(ctx context.Context, ns, name string, ranks, slices int, topologyRequired string, o PodOptions) ([]*corev1.Pod, error) {
	if err := e.CreatePodGroup(ctx, PodGroup(ns, name, ranks, topologyRequired)); err != nil {
		return nil, err
	}
	o.Gang = name
	var pods []*corev1.Pod
	for r := 0; r < ranks; r++ {
		p, err := e.Client.CoreV1().Pods(ns).Create(ctx, SlicePod(ns, fmt.Sprintf("%s-%d", name, r), slices, o), metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("creating gang member: %w", err)
		}
		pods = append(pods, p)
	}
	return pods, nil
}

// ShardGang describes a tensor-parallel gang of shard servers on the real
// node, one rank per pod, on hostNetwork with a port per rank.
type ShardGang struct {
	Namespace, Name string
	Ranks, Slices   int
	// HTTPPort is rank r's HTTP port + r; CollectivePort is rank 0's.
	HTTPPort, CollectivePort int
	Model                    string
}

// Create creates the gang's PodGroup and pods.
func (g ShardGang) Create(ctx context.Context, e *Env) ([]*corev1.Pod, error) {
	if err := e.CreatePodGroup(ctx, PodGroup(g.Namespace, g.Name, g.Ranks, "")); err != nil {
		return nil, err
	}
	return g.CreatePods(ctx, e)
}

// CreatePods creates the gang's pods only: a controller recreating a lost
// group (the PodGroup stays).
func (g ShardGang) CreatePods(ctx context.Context, e *Env) ([]*corev1.Pod, error) {
	model := g.Model
	if model == "" {
		model = "tiny"
	}
	var pods []*corev1.Pod
	for r := 0; r < g.Ranks; r++ {
		args := []string{
			"--rank", fmt.Sprint(r), "--world-size", fmt.Sprint(g.Ranks),
			"--model", model,
			"--listen", fmt.Sprintf("127.0.0.1:%d", g.HTTPPort+r),
			"--collective-port", fmt.Sprint(g.CollectivePort),
			"--collective-listen", fmt.Sprintf("127.0.0.1:%d", g.CollectivePort),
			"--leader-addr", fmt.Sprintf("127.0.0.1:%d", g.CollectivePort),
		}
		pod := SlicePod(g.Namespace, fmt.Sprintf("%s-rank-%d", g.Name, r), g.Slices, PodOptions{
			Image: ShardServerImage, Args: args, HostNetwork: true, Gang: g.Name,
			NodeSelector:  map[string]string{RealNodeLabel: "true"},
			ReadinessPort: g.HTTPPort + r,
			Labels:        map[string]string{"tessera.dev/rank": fmt.Sprint(r)},
		})
		p, err := e.Client.CoreV1().Pods(g.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("creating rank %d: %w", r, err)
		}
		pods = append(pods, p)
	}
	return pods, nil
}

// URL is rank 0's HTTP endpoint.
func (g ShardGang) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", g.HTTPPort) }

// WaitPods waits until every pod matching selector in ns satisfies cond and
// there are exactly n of them, and returns them sorted by name.
func (e *Env) WaitPods(ctx context.Context, ns, selector string, n int, timeout time.Duration, what string, cond func(*corev1.Pod) bool) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	var lastState string
	err := wait.PollUntilContextTimeout(ctx, 300*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, nil
		}
		pods = list.Items
		ok := 0
		var states []string
		for i := range pods {
			if cond(&pods[i]) {
				ok++
			}
			states = append(states, fmt.Sprintf("%s=%s@%s", pods[i].Name, pods[i].Status.Phase, pods[i].Spec.NodeName))
		}
		lastState = strings.Join(states, " ")
		return len(pods) == n && ok == n, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for %d pods (%s) %s: %w; last: %s", n, selector, what, err, lastState)
	}
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	return pods, nil
}

// Bound, Running and Ready are conditions for WaitPods.
func Bound(p *corev1.Pod) bool   { return p.Spec.NodeName != "" }
func Running(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }
func Ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Slices returns what the pod holds (podspec.HeldSlices: the device
// plugin's truth when it has reported, else the scheduler's assignment).
// Tests want clean annotations: a malformed one is an error here, even when
// the other one is readable, and so is a pod with neither.
func Slices(p *corev1.Pod) ([]api.SliceID, error) {
	ids, from, err := podspec.HeldSlices(p)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	if from == podspec.HeldNone {
		return nil, fmt.Errorf("pod %s has neither %s nor %s", p.Name, api.AnnotationSlicesAllocated, api.AnnotationSliceAssignment)
	}
	return ids, nil
}

// DeleteAndWait deletes the pods matching selector and waits until they are
// gone, so their slices are free again.
func (e *Env) DeleteAndWait(ctx context.Context, ns, selector string, timeout time.Duration) error {
	err := e.Client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{LabelSelector: selector})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 300*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		return err == nil && len(list.Items) == 0, nil
	})
}

// GangSelector selects a gang's pods.
func GangSelector(gang string) string {
	return labels.Set{api.LabelPodGroup: gang}.String()
}

// Completion is one answer of the shard server's /v1/completions.
type Completion struct {
	Text             string
	CompletionTokens int
	Elapsed          time.Duration
}

// Complete sends a greedy completion request to a shard server.
func Complete(ctx context.Context, baseURL, prompt string, maxTokens int) (*Completion, error) {
	body, _ := json.Marshal(map[string]any{"prompt": prompt, "max_tokens": maxTokens, "temperature": 0})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, baseURL+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("completion: %s: %s", resp.Status, b)
	}
	var out struct {
		Choices []struct {
			Text string `json:"text"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("completion: %w: %s", err, b)
	}
	if len(out.Choices) == 0 {
		return nil, fmt.Errorf("completion without choices: %s", b)
	}
	return &Completion{Text: out.Choices[0].Text, CompletionTokens: out.Usage.CompletionTokens, Elapsed: time.Since(start)}, nil
}
