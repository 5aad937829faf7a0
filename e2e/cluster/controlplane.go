package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// identities are the static-token users of the cluster. Tokens are random
// per cluster; the token file never leaves the cluster directory.
var identities = []struct {
	name, user string
	groups     []string
}{
	{"admin", "tessera-admin", []string{"system:masters"}},
	{"kube-controller-manager", "system:kube-controller-manager", nil},
	{"kube-scheduler", "system:kube-scheduler", nil},
	{"kwok", "kwok-controller", []string{"system:masters"}},
	// The LeaderWorkerSet controller, bound to its release's ClusterRole.
	{lwsIdentity, "lws-controller-manager", nil},
	// The custom metrics pipeline (metrics.go).
	{prometheusID, "prometheus", nil},
	{metricsAdapterID, "prometheus-adapter", nil},
	// Cluster DNS (dns.go).
	{dnsIdentity, "coredns", nil},
	// node is filled in with the real node's name: the Node authorizer
	// confines the kubelet to its own node's objects.
	{"node", "", []string{"system:nodes"}},
}

// loopbackServing names the serving certificate (pki/<name>.crt, .key) for
// 127.0.0.1 and localhost, signed by the cluster CA.
const loopbackServing = "loopback-serving"

// identityUser is the user name of a built-in identity other than node.
func identityUser(name string) string {
	for _, id := range identities {
		if id.name == name {
			return id.user
		}
	}
	return ""
}

type access struct {
	APIServerURL string            `json:"apiServerURL"`
	RealNodeName string            `json:"realNodeName,omitempty"`
	Tokens       map[string]string `json:"tokens"`
}

func (c *Cluster) makePKI(context.Context) error {
	p, err := newPKI(filepath.Join(c.Dir, "pki"))
	if err != nil {
		return err
	}
	hosts := []string{"127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if err := p.issue("apiserver", "kube-apiserver", nil, hosts, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	// The apiserver's client identity towards the kubelet (logs, exec).
	if err := p.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, x509.ExtKeyUsageClientAuth); err != nil {
		return err
	}
	// Webhook and extension servers that run as host processes (the
	// LeaderWorkerSet controller) serve on 127.0.0.1 with this.
	if err := p.issue(loopbackServing, "127.0.0.1", nil, []string{"127.0.0.1", "localhost"}, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	// The API server's aggregation layer: its client certificate towards
	// extension API servers (the custom metrics adapter), and that
	// adapter's serving certificate for the name the aggregator checks.
	if err := p.issue(frontProxyClient, frontProxyClient, nil, nil, x509.ExtKeyUsageClientAuth); err != nil {
		return err
	}
	if err := p.issue(adapterServing, adapterServiceDNS, nil, []string{adapterServiceDNS, "127.0.0.1", "localhost"}, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	if err := p.serviceAccountKey(); err != nil {
		return err
	}
	c.tokens = map[string]string{}
	var csv strings.Builder
	for i, id := range identities {
		tok, err := randomToken()
		if err != nil {
			return err
		}
		user := id.user
		if id.name == "node" {
			user = "system:node:" + c.RealNodeName
		}
		c.tokens[id.name] = tok
		fmt.Fprintf(&csv, "%s,%s,uid-%d,%q\n", tok, user, i, strings.Join(id.groups, ","))
	}
	if err := os.WriteFile(p.path("tokens.csv"), []byte(csv.String()), 0o600); err != nil {
		return err
	}
	realNode := ""
	if c.cfg.RealNode {
		realNode = c.RealNodeName
	}
	b, err := json.Marshal(access{APIServerURL: c.APIServerURL, RealNodeName: realNode, Tokens: c.tokens})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "access.json"), b, 0o600); err != nil {
		return err
	}
	for _, id := range []string{"admin", "kube-controller-manager", "kube-scheduler", "kwok", "node", lwsIdentity, prometheusID, metricsAdapterID, dnsIdentity} {
		name := id + ".kubeconfig"
		if id == "admin" {
			name = "kubeconfig"
		}
		if err := c.writeKubeconfig(filepath.Join(c.Dir, name), id); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) loadAccess() error {
	b, err := os.ReadFile(filepath.Join(c.Dir, "access.json"))
	if err != nil {
		return err
	}
	var a access
	if err := json.Unmarshal(b, &a); err != nil {
		return err
	}
	c.APIServerURL, c.tokens, c.RealNodeName = a.APIServerURL, a.Tokens, a.RealNodeName
	return nil
}

// KubeconfigFor returns the path of a kubeconfig for a built-in identity.
func (c *Cluster) KubeconfigFor(identity string) string {
	if identity == "admin" {
		return c.Kubeconfig
	}
	return filepath.Join(c.Dir, identity+".kubeconfig")
}

func (c *Cluster) writeKubeconfig(path, identity string) error {
	const tmpl = `apiVersion: v1
kind: Config
clusters:
- name: tessera-local
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: tessera-local
  context:
    cluster: tessera-local
    user: %s
current-context: tessera-local
`
	ca := filepath.Join(c.Dir, "pki", "ca.crt")
	return os.WriteFile(path, []byte(fmt.Sprintf(tmpl, c.APIServerURL, ca, identity, c.tokens[identity], identity)), 0o600)
}

// tool is the path of a make-tools binary. A cluster from Attach has no
// Config: TESSERA_TOOLS_DIR says where the tools are then.
func (c *Cluster) tool(name string) string {
	dir := c.cfg.ToolsDir
	if dir == "" {
		dir = os.Getenv("TESSERA_TOOLS_DIR")
	}
	return filepath.Join(dir, name)
}

func (c *Cluster) startEtcd(ctx context.Context) error {
	client := fmt.Sprintf("http://127.0.0.1:%d", c.ports.etcdClient)
	peer := fmt.Sprintf("http://127.0.0.1:%d", c.ports.etcdPeer)
	p, err := c.startProc("etcd", c.tool("etcd"), []string{
		"--name", "tessera",
		"--data-dir", filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls", client,
		"--advertise-client-urls", client,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "tessera=" + peer,
		"--unsafe-no-fsync", // test data only; fsync dominates start-up on slow disks
		"--quota-backend-bytes", "8589934592",
		"--log-level", "warn",
	}, nil)
	if err != nil {
		return err
	}
	return waitHTTP(ctx, p, client+"/health", nil, 60*time.Second)
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	pki := func(n string) string { return filepath.Join(c.Dir, "pki", n) }
	p, err := c.startProc("kube-apiserver", c.tool("kube-apiserver"), []string{
		"--etcd-servers", fmt.Sprintf("http://127.0.0.1:%d", c.ports.etcdClient),
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		// The endpoint reconciler refuses loopback addresses; pods that need
		// the apiserver reach it on 127.0.0.1 (hostNetwork) instead of the
		// kubernetes Service.
		"--endpoint-reconciler-type", "none",
		"--secure-port", fmt.Sprint(c.ports.apiserver),
		"--tls-cert-file", pki("apiserver.crt"),
		"--tls-private-key-file", pki("apiserver.key"),
		"--client-ca-file", pki("ca.crt"),
		"--token-auth-file", pki("tokens.csv"),
		"--authorization-mode", "Node,RBAC",
		// PodNodeSelector: a namespace's scheduler.alpha.kubernetes.io/node-selector
		// annotation pins its pods to nodes, so an example manifest applies
		// unchanged to the real node (or to simulated ones).
		"--enable-admission-plugins", "NodeRestriction,PodNodeSelector",
		"--service-account-key-file", pki("sa.pub"),
		"--service-account-signing-key-file", pki("sa.key"),
		"--service-account-issuer", "https://kubernetes.default.svc",
		// Service IPs are only allocated, never routed: there is no
		// kube-proxy, and pods reach the apiserver on loopback.
		"--service-cluster-ip-range", "10.96.0.0/16",
		// Aggregation (custom.metrics.k8s.io): the front proxy's client
		// certificate and the CA and headers extension servers trust.
		"--proxy-client-cert-file", pki(frontProxyClient + ".crt"),
		"--proxy-client-key-file", pki(frontProxyClient + ".key"),
		"--requestheader-client-ca-file", pki("ca.crt"),
		"--requestheader-allowed-names", frontProxyClient,
		"--requestheader-username-headers", "X-Remote-User",
		"--requestheader-group-headers", "X-Remote-Group",
		"--requestheader-extra-headers-prefix", "X-Remote-Extra-",
		"--kubelet-client-certificate", pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key", pki("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types", "InternalIP",
		"--allow-privileged=true",
		"--feature-gates", "GenericWorkload=true,TopologyAwareWorkloadScheduling=true",
		"--runtime-config", "scheduling.k8s.io/v1beta1=true,scheduling.k8s.io/v1alpha3=true",
		"--max-requests-inflight", "2000",
		"--max-mutating-requests-inflight", "1000",
		"--profiling=false",
		"--v", "1",
	}, nil)
	if err != nil {
		return err
	}
	return waitHTTP(ctx, p, c.APIServerURL+"/readyz", c.adminHTTP(), 120*time.Second)
}

func (c *Cluster) startControllerManager(ctx context.Context) error {
	pki := func(n string) string { return filepath.Join(c.Dir, "pki", n) }
	p, err := c.startProc("kube-controller-manager", c.tool("kube-controller-manager"), []string{
		"--kubeconfig", c.KubeconfigFor("kube-controller-manager"),
		"--authentication-kubeconfig", c.KubeconfigFor("kube-controller-manager"),
		"--authorization-kubeconfig", c.KubeconfigFor("kube-controller-manager"),
		"--controllers", "*,-nodeipam",
		"--service-account-private-key-file", pki("sa.key"),
		"--root-ca-file", pki("ca.crt"),
		"--use-service-account-credentials",
		"--leader-elect=false",
		"--bind-address", "127.0.0.1",
		"--secure-port", "0",
		"--feature-gates", "GenericWorkload=true",
		// The autoscaling tests react to a load step in seconds (default 15 s).
		"--horizontal-pod-autoscaler-sync-period", "5s",
		"--kube-api-qps", "200",
		"--kube-api-burst", "400",
		"--v", "1",
	}, nil)
	if err != nil {
		return err
	}
	// It has no health port (secure-port 0 keeps it off the network); it
	// runs its controllers once the serviceaccount controller has given
	// the default namespace its default ServiceAccount. Bad flags end the
	// process, which fails the wait at once.
	client, err := c.Client()
	if err != nil {
		return err
	}
	return poll(ctx, 200*time.Millisecond, 60*time.Second, func(ctx context.Context) (bool, error) {
		if !p.alive() {
			return false, fmt.Errorf("exited; see %s:\n%s", p.Log, tail(p.Log, 15))
		}
		_, err := client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}, func() error {
		return fmt.Errorf("no ServiceAccount default/default after 60s: its controllers do not run; see %s:\n%s", p.Log, tail(p.Log, 15))
	})
}

// settle is for a component with nothing to wait for: no health port
// (secure-port 0 keeps it off the network) and nothing it writes before
// work arrives. It proves a negative: the process, just started and
// recorded, does not exit (bad flags, a config it refuses) within its
// first second, so that error surfaces at start rather than later as a
// missing component. It fails as soon as the process is gone.
func settle(ctx context.Context, p proc) error {
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Second, true, func(context.Context) (bool, error) {
		if !p.alive() {
			return false, fmt.Errorf("exited; see %s:\n%s", p.Log, tail(p.Log, 15))
		}
		return false, nil // never done: alive all along is the pass
	})
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case wait.Interrupted(err):
		return nil
	default:
		return err
	}
}

// startDefaultScheduler runs the stock kube-scheduler, so pods that do not
// opt into Tessera schedule as they would on any cluster.
func (c *Cluster) startDefaultScheduler(ctx context.Context) error {
	kc := c.KubeconfigFor("kube-scheduler")
	p, err := c.startProc("kube-scheduler", c.tool("kube-scheduler"), []string{
		"--kubeconfig", kc,
		"--authentication-kubeconfig", kc,
		"--authorization-kubeconfig", kc,
		"--leader-elect=false",
		"--bind-address", "127.0.0.1",
		"--secure-port", "0",
		"--feature-gates", "GenericWorkload=true",
		"--v", "1",
	}, nil)
	if err != nil {
		return err
	}
	return settle(ctx, p)
}

func (c *Cluster) adminHTTP() *http.Client {
	pool := x509.NewCertPool()
	if b, err := os.ReadFile(filepath.Join(c.Dir, "pki", "ca.crt")); err == nil {
		pool.AppendCertsFromPEM(b)
	}
	tok := c.tokens["admin"]
	return &http.Client{
		Timeout:   5 * time.Second,
		Transport: bearer{tok, &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
	}
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// waitHTTP polls url until it answers 200, failing early when p died.
func waitHTTP(ctx context.Context, p proc, url string, client *http.Client, timeout time.Duration) error {
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	var last string
	return poll(ctx, 200*time.Millisecond, timeout, func(ctx context.Context) (bool, error) {
		if !p.alive() {
			return false, fmt.Errorf("%s exited; see %s:\n%s", p.Name, p.Log, tail(p.Log, 15))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		resp.Body.Close()
		last = resp.Status
		return resp.StatusCode == http.StatusOK, nil
	}, func() error {
		return fmt.Errorf("%s not healthy after %s (last: %s); see %s:\n%s", p.Name, timeout, last, p.Log, tail(p.Log, 15))
	})
}
