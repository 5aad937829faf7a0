package cluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ClusterDomain is the cluster's DNS domain (the kubelet's clusterDomain).
const ClusterDomain = "cluster.local"

// dnsIdentity is the static-token user CoreDNS reads the API as: list and
// watch of Services, EndpointSlices and Namespaces, what its kubernetes
// plugin needs (the ClusterRole CoreDNS's own deployment ships).
const dnsIdentity = "coredns"

// startDNS runs CoreDNS (built unmodified from the Go module proxy) as the
// cluster DNS on PodGateway:53, where the kubelet points pods
// (clusterDNS). It answers the cluster domain from the API server
// (Services, headless Services' pod records such as a LeaderWorkerSet
// leader's address) and NXDOMAIN for every other name: pods have no route
// off the machine, so there is nothing to forward to.
func (c *Cluster) startDNS(ctx context.Context) error {
	bin := c.tool("coredns")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("coredns is not built (%w): run make tools", err)
	}
	client, err := c.Client()
	if err != nil {
		return err
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "tessera-local:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tessera-local:coredns"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: identityUser(dnsIdentity)}},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
	}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	dir := filepath.Join(c.Dir, "dns")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	corefile := fmt.Sprintf(`%[1]s in-addr.arpa ip6.arpa {
    bind %[2]s
    errors
    kubernetes %[1]s in-addr.arpa ip6.arpa {
        kubeconfig %[3]s
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
. {
    bind %[2]s
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
`, ClusterDomain, PodGateway, c.KubeconfigFor(dnsIdentity))
	path := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		return err
	}
	p, err := c.startProc("coredns", bin, []string{"-conf", path, "-dns.port", "53"}, nil)
	if err != nil {
		return err
	}
	// Ready once it answers for the kubernetes Service from the API (the
	// plugin serves only after its first sync).
	r := c.DNSResolver()
	name := "kubernetes.default.svc." + ClusterDomain
	var last error
	return poll(ctx, 200*time.Millisecond, 60*time.Second, func(ctx context.Context) (bool, error) {
		if !p.alive() {
			return false, fmt.Errorf("coredns exited; see %s:\n%s", p.Log, tail(p.Log, 15))
		}
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, last = r.LookupHost(qctx, name)
		return last == nil, nil
	}, func() error {
		return fmt.Errorf("coredns did not resolve %s within 60s (%v); see %s", name, last, p.Log)
	})
}

// DNSResolver resolves names through the cluster DNS, as a pod does.
func (c *Cluster) DNSResolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, net.JoinHostPort(PodGateway, "53"))
	}}
}
