package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// The custom metrics pipeline of the local cluster: Prometheus scrapes,
// prometheus-adapter serves custom.metrics.k8s.io from it, and the
// HorizontalPodAutoscaler controller of kube-controller-manager reads that
// API through the API server's aggregation layer. Both run as host
// processes on 127.0.0.1 with identities of their own.
const (
	// MetricsNamespace holds the adapter's Service (of type ExternalName:
	// the aggregator resolves it to localhost, since there is no
	// kube-proxy and the endpoint reconciler refuses loopback addresses).
	MetricsNamespace = "custom-metrics"
	adapterService   = "prometheus-adapter"
	// adapterServing names the adapter's serving certificate: the
	// aggregator checks it against the Service's DNS name.
	adapterServing    = "custom-metrics-serving"
	frontProxyClient  = "front-proxy-client"
	prometheusID      = "prometheus"
	metricsAdapterID  = "metrics-adapter"
	customMetricsAPI  = "custom.metrics.k8s.io"
	adapterServiceDNS = adapterService + "." + MetricsNamespace + ".svc"
)

// MetricsPipeline says what Prometheus scrapes and what the adapter serves.
type MetricsPipeline struct {
	// ScrapeConfigs is the scrape_configs list of prometheus.yml (YAML, a
	// list). Kubernetes service discovery may use
	// kubeconfig_file: {{KUBECONFIG}}, which is replaced by Prometheus's own
	// kubeconfig (read-only on pods, nodes, services, endpoints).
	ScrapeConfigs string
	// AdapterRules is the prometheus-adapter configuration (rules:).
	AdapterRules string
	// ScrapeInterval defaults to 2s: the autoscaling tests react to load
	// steps in seconds, not the usual minute.
	ScrapeInterval time.Duration
}

// StartMetricsPipeline runs Prometheus and prometheus-adapter (both built
// unmodified by make tools from the Go module proxy) and registers the
// adapter as custom.metrics.k8s.io (v1beta1 and v1beta2) with the API
// server, waiting until the APIServices are Available. It returns
// Prometheus's URL on loopback.
func (c *Cluster) StartMetricsPipeline(ctx context.Context, mp MetricsPipeline) (string, error) {
	for _, bin := range []string{"prometheus", "prometheus-adapter"} {
		if _, err := os.Stat(c.tool(bin)); err != nil {
			return "", fmt.Errorf("%s is not built (%w): run make tools", bin, err)
		}
	}
	client, err := c.Client()
	if err != nil {
		return "", err
	}
	if err := grantMetrics(ctx, client); err != nil {
		return "", err
	}
	dir := filepath.Join(c.Dir, "metrics")
	if err := os.MkdirAll(filepath.Join(dir, "tsdb"), 0o700); err != nil {
		return "", err
	}
	interval := mp.ScrapeInterval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	promPort, err := freePort()
	if err != nil {
		return "", err
	}
	scrape := strings.ReplaceAll(mp.ScrapeConfigs, "{{KUBECONFIG}}", c.KubeconfigFor(prometheusID))
	promCfg := fmt.Sprintf("global:\n  scrape_interval: %s\n  evaluation_interval: %s\nscrape_configs:\n%s", interval, interval, scrape)
	promCfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(promCfgPath, []byte(promCfg), 0o600); err != nil {
		return "", err
	}
	prom, err := c.startProc("prometheus", c.tool("prometheus"), []string{
		"--config.file", promCfgPath,
		"--storage.tsdb.path", filepath.Join(dir, "tsdb"),
		"--storage.tsdb.retention.time", "6h",
		"--web.listen-address", fmt.Sprintf("127.0.0.1:%d", promPort),
		"--log.level", "warn",
	}, nil)
	if err != nil {
		return "", err
	}
	promURL := fmt.Sprintf("http://127.0.0.1:%d", promPort)
	if err := waitHTTP(ctx, prom, promURL+"/-/ready", nil, 60*time.Second); err != nil {
		return "", err
	}

	rulesPath := filepath.Join(dir, "adapter-rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(mp.AdapterRules), 0o600); err != nil {
		return "", err
	}
	adapterPort, err := freePort()
	if err != nil {
		return "", err
	}
	pki := func(n string) string { return filepath.Join(c.Dir, "pki", n) }
	kc := c.KubeconfigFor(metricsAdapterID)
	adapter, err := c.startProc("prometheus-adapter", c.tool("prometheus-adapter"), []string{
		"--secure-port", fmt.Sprint(adapterPort),
		"--bind-address", "127.0.0.1",
		"--tls-cert-file", pki(adapterServing + ".crt"),
		"--tls-private-key-file", pki(adapterServing + ".key"),
		"--lister-kubeconfig", kc,
		"--authentication-kubeconfig", kc,
		"--authorization-kubeconfig", kc,
		"--prometheus-url", promURL,
		"--config", rulesPath,
		// New series (a group the HPA just added) show up within seconds.
		"--metrics-relist-interval", "5s",
		"--v", "1",
	}, nil)
	if err != nil {
		return "", err
	}
	caPEM, err := os.ReadFile(pki("ca.crt"))
	if err != nil {
		return "", err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return "", errors.New("no certificate in the cluster's ca.crt")
	}
	// Serving: the TLS handshake with the cluster CA (its health endpoints
	// need authentication, which the API server's front proxy provides).
	err = poll(ctx, 250*time.Millisecond, 60*time.Second, func(ctx context.Context) (bool, error) {
		if !adapter.alive() {
			return false, fmt.Errorf("prometheus-adapter exited; see %s:\n%s", adapter.Log, tail(adapter.Log, 15))
		}
		conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", adapterPort), &tls.Config{RootCAs: roots, ServerName: adapterServiceDNS})
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	}, func() error {
		return fmt.Errorf("prometheus-adapter not serving after 60s; see %s:\n%s", adapter.Log, tail(adapter.Log, 15))
	})
	if err != nil {
		return "", err
	}
	if err := c.registerAdapter(ctx, client, adapterPort, caPEM); err != nil {
		return "", err
	}
	return promURL, nil
}

// registerAdapter creates the adapter's Service (ExternalName localhost)
// and the custom metrics APIServices pointing at it, and waits until the
// aggregator reports them Available.
func (c *Cluster) registerAdapter(ctx context.Context, client kubernetes.Interface, port int, caPEM []byte) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: adapterService, Namespace: MetricsNamespace},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "localhost",
			Ports: []corev1.ServicePort{{Name: "https", Port: int32(port)}}},
	}
	if _, err := client.CoreV1().Services(MetricsNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the adapter's Service: %w", err)
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		return err
	}
	apiServices := dyn.Resource(schema.GroupVersionResource{Group: "apiregistration.k8s.io", Version: "v1", Resource: "apiservices"})
	var names []string
	for _, version := range []string{"v1beta1", "v1beta2"} {
		name := version + "." + customMetricsAPI
		names = append(names, name)
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
			"metadata": map[string]any{"name": name},
			"spec": map[string]any{
				"group": customMetricsAPI, "version": version,
				"groupPriorityMinimum": int64(100), "versionPriority": int64(100),
				"service":  map[string]any{"name": adapterService, "namespace": MetricsNamespace, "port": int64(port)},
				"caBundle": caPEM,
			},
		}}
		if _, err := apiServices.Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating APIService %s: %w", name, err)
		}
	}
	var last string
	return poll(ctx, 500*time.Millisecond, 90*time.Second, func(ctx context.Context) (bool, error) {
		for _, name := range names {
			u, err := apiServices.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				last = err.Error()
				return false, nil
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			ok := false
			for _, ci := range conds {
				cm, _ := ci.(map[string]any)
				if cm["type"] == "Available" {
					ok = cm["status"] == "True"
					last = fmt.Sprintf("%s: Available=%v (%v: %v)", name, cm["status"], cm["reason"], cm["message"])
				}
			}
			if !ok {
				return false, nil
			}
		}
		return true, nil
	}, func() error {
		return fmt.Errorf("custom metrics APIServices not Available after 90s: %s", last)
	})
}

// grantMetrics gives Prometheus read access for service discovery and the
// adapter what an aggregated API server needs (delegated authentication
// and authorization, the authentication ConfigMap) plus reading the
// objects its metrics describe, as the adapter's own manifests do.
func grantMetrics(ctx context.Context, client kubernetes.Interface) error {
	rbac := client.RbacV1()
	read := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes", "namespaces", "pods", "services", "endpoints"}, Verbs: []string{"get", "list", "watch"}}}
	for _, cr := range []*rbacv1.ClusterRole{
		{ObjectMeta: metav1.ObjectMeta{Name: "tessera-local:prometheus"}, Rules: read},
		{ObjectMeta: metav1.ObjectMeta{Name: "tessera-local:metrics-adapter"}, Rules: read},
	} {
		if _, err := rbac.ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	user := func(id string) []rbacv1.Subject {
		return []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: identityUser(id)}}
	}
	for _, b := range []*rbacv1.ClusterRoleBinding{
		{ObjectMeta: metav1.ObjectMeta{Name: "tessera-local:prometheus"}, Subjects: user(prometheusID),
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "tessera-local:prometheus"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "tessera-local:metrics-adapter"}, Subjects: user(metricsAdapterID),
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "tessera-local:metrics-adapter"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "tessera-local:metrics-adapter:auth-delegator"}, Subjects: user(metricsAdapterID),
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "system:auth-delegator"}},
	} {
		if _, err := rbac.ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "tessera-local:metrics-adapter:auth-reader", Namespace: metav1.NamespaceSystem},
		Subjects: user(metricsAdapterID),
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "extension-apiserver-authentication-reader"}}
	if _, err := rbac.RoleBindings(metav1.NamespaceSystem).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: MetricsNamespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// PrometheusQuery runs an instant PromQL query and returns the raw JSON.
func PrometheusQuery(ctx context.Context, promURL, query string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, promURL+"/api/v1/query", nil)
	if err != nil {
		return nil, err
	}
	q := req.URL.Query()
	q.Set("query", query)
	req.URL.RawQuery = q.Encode()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("prometheus query %q: %s: %s", query, resp.Status, b)
	}
	return b, nil
}
