package scenario

import (
	"context"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/tessera-gpu/tessera/api"
)

// LWSResource is the LeaderWorkerSet API.
var LWSResource = schema.GroupVersionResource{Group: "leaderworkerset.x-k8s.io", Version: "v1", Resource: "leaderworkersets"}

// LWS labels on the pods it creates.
const (
	LWSNameLabel        = api.LabelLWSName
	LWSGroupIndexLabel  = "leaderworkerset.sigs.k8s.io/group-index"
	LWSWorkerIndexLabel = "leaderworkerset.sigs.k8s.io/worker-index"
	// PortPrefixAnnotation tells the local cluster's Prometheus how a
	// shard server on hostNetwork numbers its port (ShardServerLWS).
	PortPrefixAnnotation = "tessera.dev/e2e-port-prefix"
)

// LocalScrapeConfig scrapes every shard server the autoscaling test runs:
// they use hostNetwork on the one real node, so each needs a port of its
// own, and a rank of group g, worker w listens on <prefix><g><w> (the
// container's args build it from the group-index label and LWS's worker
// index; Prometheus rebuilds it from the same labels). On a real cluster
// pods have their own IPs and the usual pod-IP:containerPort target does
// (docs/autoscaling.md).
const LocalScrapeConfig = `- job_name: tessera-shard-servers
  kubernetes_sd_configs:
  - role: pod
    kubeconfig_file: {{KUBECONFIG}}
  relabel_configs:
  - source_labels: [__meta_kubernetes_pod_annotation_tessera_dev_e2e_port_prefix]
    regex: .+
    action: keep
  - source_labels: [__meta_kubernetes_pod_phase]
    regex: Running
    action: keep
  - source_labels: [__meta_kubernetes_pod_annotation_tessera_dev_e2e_port_prefix, __meta_kubernetes_pod_label_leaderworkerset_sigs_k8s_io_group_index, __meta_kubernetes_pod_label_leaderworkerset_sigs_k8s_io_worker_index]
    regex: (\d+);(\d);(\d)
    replacement: 127.0.0.1:${1}${2}${3}
    target_label: __address__
  - source_labels: [__meta_kubernetes_namespace]
    target_label: namespace
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: pod
`

// AdapterRules is the prometheus-adapter rule that turns a shard server's
// load into a pods metric: requests in flight (generating plus queued for a
// KV-cache slot), averaged over the last 20 s from the server's exact
// integral of them (the gauges are instants: the HPA acting on them scaled
// a busy LWS in mid-rollout). docs/autoscaling.md has the same rule with a
// 1 m window, for Prometheus's usual 15-30 s scrape interval; this cluster
// scrapes every 2 s.
const AdapterRules = `rules:
- seriesQuery: 'tessera_inference_requests_in_flight_seconds_total{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      pod: {resource: pod}
  name:
    matches: ^tessera_inference_requests_in_flight_seconds_total$
    as: tessera_inference_requests_in_flight
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[20s])) by (<<.GroupBy>>)'
`

// ShardServerLWS is a LeaderWorkerSet of 2-rank shard-server groups on the
// real node. Ports: rank w of group g serves HTTP on <http><g><w> and
// group g's collective on <coll><g>0, built by the kubelet from the
// group-index label (downward API) and LWS's LWS_WORKER_INDEX; the ranks
// find each other on loopback, not through LWS_LEADER_ADDRESS (the
// example manifest's test, TestLeaderWorkerSetExampleServes, covers that
// path on pod IPs and the cluster DNS; hostNetwork keeps every rank's
// metrics on a loopback port Prometheus scrapes from the host).
func ShardServerLWS(ns, name, model string, httpPrefix, collPrefix int) *unstructured.Unstructured {
	podTemplate := func() map[string]any {
		return map[string]any{
			"metadata": map[string]any{"annotations": map[string]any{PortPrefixAnnotation: fmt.Sprint(httpPrefix)}},
			"spec": map[string]any{
				"schedulerName": api.SchedulerName,
				"hostNetwork":   true,
				"nodeSelector":  map[string]any{RealNodeLabel: "true"},
				"containers": []any{map[string]any{
					"name": "shard", "image": ShardServerImage, "imagePullPolicy": "Never",
					"env": []any{map[string]any{"name": "GROUP_INDEX", "valueFrom": map[string]any{
						"fieldRef": map[string]any{"fieldPath": "metadata.labels['" + LWSGroupIndexLabel + "']"}}}},
					"args": []any{
						"--rank", "$(LWS_WORKER_INDEX)", "--world-size", "$(LWS_GROUP_SIZE)",
						"--model", model,
						"--listen", fmt.Sprintf("127.0.0.1:%d$(GROUP_INDEX)$(LWS_WORKER_INDEX)", httpPrefix),
						"--collective-port", fmt.Sprintf("%d$(GROUP_INDEX)0", collPrefix),
						"--collective-listen", fmt.Sprintf("127.0.0.1:%d$(GROUP_INDEX)0", collPrefix),
						"--leader-addr", fmt.Sprintf("127.0.0.1:%d$(GROUP_INDEX)0", collPrefix),
						// Ranks share two CPU cores here: sleep, do not spin.
						"--collective-busy-poll", "0",
					},
					"resources": map[string]any{"limits": map[string]any{api.ResourceName: "2"}},
					// Rank 0 turns unready while a rank is missing (and
					// every rank until the group formed): the probe is the
					// server's own /readyz, through its probe subcommand
					// since the port is not fixed in the template.
					"readinessProbe": map[string]any{
						"exec": map[string]any{"command": []any{"/tessera-shard-server", "probe",
							fmt.Sprintf("http://127.0.0.1:%d${GROUP_INDEX}${LWS_WORKER_INDEX}/readyz", httpPrefix)}},
						// Two misses, not one: on this 2-core machine a busy
						// moment can delay one probe.
						"periodSeconds": int64(1), "failureThreshold": int64(2), "timeoutSeconds": int64(5),
					},
				}},
			},
		}
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"replicas": int64(1),
			"rolloutStrategy": map[string]any{"type": "RollingUpdate",
				"rollingUpdateConfiguration": map[string]any{"maxSurge": int64(1), "maxUnavailable": int64(0)}},
			"leaderWorkerTemplate": map[string]any{
				"size": int64(2), "leaderTemplate": podTemplate(), "workerTemplate": podTemplate(),
			},
		},
	}}
}

// HPAResource is the autoscaling/v2 HorizontalPodAutoscaler API.
var HPAResource = schema.GroupVersionResource{Group: "autoscaling", Version: "v2", Resource: "horizontalpodautoscalers"}

// ShardServerHPA scales LeaderWorkerSet name between 1 and 2 groups on
// tessera_inference_requests_in_flight (AdapterRules), 1.5 per group, and
// scales in as soon as the load is gone (the default waits 5 minutes).
func ShardServerHPA(ns, name string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec": map[string]any{
			"scaleTargetRef": map[string]any{"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": name},
			"minReplicas":    int64(1), "maxReplicas": int64(2),
			"metrics": []any{map[string]any{"type": "Pods", "pods": map[string]any{
				"metric": map[string]any{"name": "tessera_inference_requests_in_flight"},
				"target": map[string]any{"type": "AverageValue", "averageValue": "1500m"},
			}}},
			"behavior": map[string]any{"scaleDown": map[string]any{"stabilizationWindowSeconds": int64(0)}},
		},
	}}
}

// GroupURL is group g's leader on loopback.
func GroupURL(httpPrefix, g int) string {
	return fmt.Sprintf("http://127.0.0.1:%d%d0", httpPrefix, g)
}

// LWSGroupPods lists the live pods of LWS name by group index.
func LWSGroupPods(ctx context.Context, e *Env, ns, name string) (map[string][]corev1.Pod, error) {
	list, err := e.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: LWSNameLabel + "=" + name})
	if err != nil {
		return nil, err
	}
	out := map[string][]corev1.Pod{}
	for _, p := range list.Items {
		if p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		out[p.Labels[LWSGroupIndexLabel]] = append(out[p.Labels[LWSGroupIndexLabel]], p)
	}
	return out, nil
}

// LeaderBalancer sends requests round robin to the leaders that are Ready
// and not terminating, as a Service's endpoints would (the local cluster
// has no kube-proxy).
type LeaderBalancer struct {
	e          *Env
	ns, name   string
	httpPrefix int
	mu         sync.Mutex
	urls       []string
	next       int
	errs       []string // the first failures, for the log
	served     atomic.Int64
	failed     atomic.Int64
}

func NewLeaderBalancer(e *Env, ns, name string, httpPrefix int) *LeaderBalancer {
	return &LeaderBalancer{e: e, ns: ns, name: name, httpPrefix: httpPrefix}
}

func (b *LeaderBalancer) Run(ctx context.Context) {
	_ = wait.PollUntilContextCancel(ctx, 300*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		list, err := b.e.Client.CoreV1().Pods(b.ns).List(ctx, metav1.ListOptions{LabelSelector: LWSNameLabel + "=" + b.name + "," + LWSWorkerIndexLabel + "=0"})
		if err != nil {
			return false, nil
		}
		var urls []string
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && Ready(&p) {
				var g int
				if _, err := fmt.Sscan(p.Labels[LWSGroupIndexLabel], &g); err == nil {
					urls = append(urls, GroupURL(b.httpPrefix, g))
				}
			}
		}
		sort.Strings(urls)
		b.mu.Lock()
		b.urls = urls
		b.mu.Unlock()
		return false, nil
	})
}

func (b *LeaderBalancer) ReadyLeaders() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.urls)
}

// request sends one completion; with no ready leader it waits a moment
// (a Service with no endpoints refuses at once; that is not a server's
// failure and is not counted).
func (b *LeaderBalancer) Request(ctx context.Context) {
	b.mu.Lock()
	if len(b.urls) == 0 {
		b.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
		return
	}
	url := b.urls[b.next%len(b.urls)]
	b.next++
	b.mu.Unlock()
	if _, err := Complete(ctx, url, "Tessera scales", 48); err != nil {
		if ctx.Err() == nil {
			b.failed.Add(1)
			b.mu.Lock()
			if len(b.errs) < 8 {
				b.errs = append(b.errs, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), url, err))
			}
			b.mu.Unlock()
		}
		return
	}
	b.served.Add(1)
}

// FirstErrors returns the first failures (at most 8), timestamped.
func (b *LeaderBalancer) FirstErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}

func (b *LeaderBalancer) Counts() (served, failed int64) { return b.served.Load(), b.failed.Load() }

// FreePortPrefix finds a three-digit prefix p whose ports p00..(p+1)99 are
// all free on loopback, below the ephemeral range: p for the shard servers'
// HTTP ports, p+1 for their collectives (ShardServerLWS).
func FreePortPrefix() (int, error) {
	for p := 200; p < 320; p++ {
		free := true
		for i := 0; i < 200 && free; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p*100+i))
			if err != nil {
				free = false
				continue
			}
			l.Close()
		}
		if free {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free block of 200 ports between 20000 and 32100")
}
