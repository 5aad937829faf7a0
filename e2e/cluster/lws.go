package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/tessera-gpu/tessera/api"
)

// LWSNamespace is where the LeaderWorkerSet controller keeps its
// namespaced state (it runs as a host process here, not as a pod).
const LWSNamespace = "lws-system"

// lwsIdentity is the static-token user the LWS controller runs as, bound to
// the controller's own ClusterRole from its module (role.yaml): the
// permissions its release grants, no more.
const lwsIdentity = "lws"

// lwsSetLabel is on every pod LWS creates; the upstream kustomization
// limits LWS's pod webhooks to such pods with this object selector, so
// other pods never wait on (or fail with) the LWS webhook server.
const lwsSetLabel = api.LabelLWSName

// StartLeaderWorkerSet installs the LeaderWorkerSet CRDs and runs the real controller
// (make tools builds it unmodified from sigs.k8s.io/lws, with its CRDs,
// webhook manifests and ClusterRole from the same module zip in
// lws-config/). The controller is a host process; its webhook server
// listens on 127.0.0.1 only, with a serving certificate from the cluster's
// CA, and the API server reaches it by URL, so no Service routing is needed
// and the traffic never leaves loopback. LWS's own certificate management
// is off: it writes a certificate for an in-cluster Service name that this
// cluster does not route to. Leader election is off (one replica) and its
// metrics endpoint is disabled.
// It is Config.LeaderWorkerSet's step of Up, and callable later on a
// running cluster (once).
func (c *Cluster) StartLeaderWorkerSet(ctx context.Context) error {
	cfgDir := c.tool("lws-config")
	if _, err := os.Stat(c.tool("lws")); err != nil {
		return fmt.Errorf("the LeaderWorkerSet controller is not built (%w): run make tools", err)
	}
	if err := c.InstallLeaderWorkerSetCRDs(ctx); err != nil {
		return err
	}
	client, err := c.Client()
	if err != nil {
		return err
	}
	if err := c.grantLWS(ctx, client, filepath.Join(cfgDir, "role.yaml")); err != nil {
		return err
	}

	// The loopback serving certificate (makePKI) in the file names
	// controller-runtime's webhook server reads.
	pkiDir := filepath.Join(c.Dir, "pki")
	certDir := filepath.Join(c.Dir, "lws", "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return err
	}
	for from, to := range map[string]string{loopbackServing + ".crt": "tls.crt", loopbackServing + ".key": "tls.key"} {
		b, err := os.ReadFile(filepath.Join(pkiDir, from))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(certDir, to), b, 0o600); err != nil {
			return err
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	probe, err := freePort()
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: config.lws.x-k8s.io/v1alpha1
kind: Configuration
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
`, probe, port, certDir)
	cfgPath := filepath.Join(c.Dir, "lws", "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	proc, err := c.startProc("lws", c.tool("lws"), []string{"--config", cfgPath, "--zap-log-level", "info"},
		[]string{"KUBECONFIG=" + c.KubeconfigFor(lwsIdentity)})
	if err != nil {
		return err
	}
	// Ready: its health probe answers and the webhook server takes TLS.
	caPEM, err := os.ReadFile(filepath.Join(pkiDir, "ca.crt"))
	if err != nil {
		return err
	}
	tlsCfg := &tls.Config{RootCAs: x509.NewCertPool()}
	if !tlsCfg.RootCAs.AppendCertsFromPEM(caPEM) {
		return errors.New("no certificate in the cluster's ca.crt")
	}
	err = poll(ctx, 250*time.Millisecond, 90*time.Second, func(ctx context.Context) (bool, error) {
		if !proc.alive() {
			return false, fmt.Errorf("exited; see %s:\n%s", proc.Log, tail(proc.Log, 15))
		}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe))
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, nil
		}
		conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), tlsCfg)
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	}, func() error {
		return fmt.Errorf("not ready after 90s; see %s:\n%s", proc.Log, tail(proc.Log, 15))
	})
	if err != nil {
		return err
	}
	return registerLWSWebhooks(ctx, client, filepath.Join(cfgDir, "webhook.yaml"), fmt.Sprintf("https://127.0.0.1:%d", port), caPEM)
}

// InstallLeaderWorkerSetCRDs applies the LWS CRDs (idempotent) and waits
// until they are served. Installing them early matters for deletion: the
// garbage collector learns of new resource types at its next discovery
// resync (30 s), and until then deleting a LeaderWorkerSet leaves its pods.
func (c *Cluster) InstallLeaderWorkerSetCRDs(ctx context.Context) error {
	crds := filepath.Join(c.tool("lws-config"), "crds")
	if out, err := c.Kubectl(ctx, "apply", "--server-side", "-f", crds); err != nil {
		return fmt.Errorf("installing the LWS CRDs: %w\n%s", err, out)
	}
	if err := c.WaitCRDsEstablished(ctx, crds, time.Minute); err != nil {
		return fmt.Errorf("LWS CRDs: %w", err)
	}
	return nil
}

// WaitCRDsEstablished waits until every CRD in the files at path is
// Established. kubectl wait alone is not enough right after an apply: a CRD
// whose status has no conditions yet makes it fail at once (".status.conditions
// accessor error: <nil>"), so it is asked again until it succeeds or timeout.
func (c *Cluster) WaitCRDsEstablished(ctx context.Context, path string, timeout time.Duration) error {
	var out string
	return poll(ctx, 500*time.Millisecond, timeout, func(ctx context.Context) (bool, error) {
		var err error
		out, err = c.Kubectl(ctx, "wait", "--for=condition=Established", "--timeout=5s", "-f", path)
		return err == nil, nil
	}, func() error {
		return fmt.Errorf("not established after %s:\n%s", timeout, out)
	})
}

// grantLWS creates the LWS controller's ClusterRole from its release
// (role.yaml, as shipped) and binds it to the controller's identity, and
// the namespace it keeps its state in.
func (c *Cluster) grantLWS(ctx context.Context, client kubernetes.Interface, rolePath string) error {
	raw, err := os.ReadFile(rolePath)
	if err != nil {
		return err
	}
	var role rbacv1.ClusterRole
	if err := yaml.UnmarshalStrict(raw, &role); err != nil {
		return fmt.Errorf("%s: %w", rolePath, err)
	}
	role.Name = "lws-manager-role"
	rbac := client.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "lws-manager-rolebinding"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: identityUser(lwsIdentity)}},
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: LWSNamespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// registerLWSWebhooks creates LWS's mutating and validating webhook
// configurations from its manifest, pointed at url with the cluster CA,
// and with the object selector the upstream kustomization patches onto the
// pod webhooks (only pods LWS created).
func registerLWSWebhooks(ctx context.Context, client kubernetes.Interface, path, url string, caPEM []byte) error {
	lwsPods := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: lwsSetLabel, Operator: metav1.LabelSelectorOpExists}}}
	_, err := RegisterWebhooks(ctx, client, Webhooks{
		Manifest: path, BaseURL: url, CAPEM: caPEM,
		MutatingName: "lws-mutating-webhook-configuration", ValidatingName: "lws-validating-webhook-configuration",
		Keep: func(servicePath string, sel WebhookSelectors) bool {
			if strings.HasSuffix(servicePath, "-v1-pod") {
				*sel.Object = lwsPods
			}
			return true
		},
	})
	return err
}
