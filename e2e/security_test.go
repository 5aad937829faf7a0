package e2e

// Security tests (issue 8): least privilege of Tessera's identities as the
// API server decides it (SubjectAccessReview for RBAC, impersonated writes
// for the ValidatingAdmissionPolicy that confines the device plugin to its
// node), and the hardening of the running containers.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tessera-gpu/tessera/e2e/cluster"
	"github.com/tessera-gpu/tessera/e2e/scenario"
)

const (
	devicePluginUser = "system:serviceaccount:tessera-system:tessera-device-plugin"
	schedulerUser    = "system:serviceaccount:tessera-system:tessera-scheduler"
	nodeNameExtra    = "authentication.kubernetes.io/node-name"
)

// TestRBACLeastPrivilege asks the API server, through SubjectAccessReviews,
// what each Tessera identity may do: what it needs is allowed, everything
// it does not need is denied.
func TestRBACLeastPrivilege(t *testing.T) {
	ctx := context.Background()
	e := env(t)
	type check struct {
		user                                          string
		verb, group, resource, subresource, namespace string
		allowed                                       bool
	}
	checks := []check{
		// The device plugin: its node, pods on it, events. Never secrets,
		// never the cluster's workloads or RBAC.
		{devicePluginUser, "patch", "", "nodes", "", "", true},
		{devicePluginUser, "list", "", "pods", "", "", true},
		{devicePluginUser, "patch", "", "pods", "", "default", true},
		{devicePluginUser, "create", "", "events", "", "default", true},
		{devicePluginUser, "get", "", "secrets", "", "tessera-system", false},
		{devicePluginUser, "list", "", "secrets", "", "", false},
		{devicePluginUser, "get", "", "configmaps", "", "kube-system", false},
		{devicePluginUser, "delete", "", "pods", "", "default", false},
		{devicePluginUser, "create", "", "pods", "", "default", false},
		{devicePluginUser, "update", "", "nodes", "status", "", false},
		{devicePluginUser, "patch", "", "nodes", "status", "", false},
		{devicePluginUser, "delete", "", "nodes", "", "", false},
		{devicePluginUser, "create", "", "pods", "eviction", "default", false},
		{devicePluginUser, "update", "apps", "daemonsets", "", "tessera-system", false},
		{devicePluginUser, "create", "rbac.authorization.k8s.io", "clusterrolebindings", "", "", false},
		{devicePluginUser, "create", "", "serviceaccounts", "token", "tessera-system", false},
		{devicePluginUser, "patch", "scheduling.x-k8s.io", "podgroups", "", "default", false},
		// The scheduler: what kube-scheduler needs plus PodGroup status
		// and pod annotations. Never secrets, never nodes, never PodGroup
		// specs or workloads, never RBAC.
		{schedulerUser, "create", "", "pods", "binding", "default", true},
		{schedulerUser, "patch", "", "pods", "", "default", true},
		{schedulerUser, "delete", "", "pods", "", "default", true}, // preemption; EvictGang
		{schedulerUser, "update", "scheduling.x-k8s.io", "podgroups", "status", "default", true},
		{schedulerUser, "update", "scheduling.k8s.io", "podgroups", "status", "default", true},
		{schedulerUser, "watch", "scheduling.x-k8s.io", "podgroups", "", "", true},
		{schedulerUser, "update", "coordination.k8s.io", "leases", "", "tessera-system", true},
		{schedulerUser, "get", "", "secrets", "", "tessera-system", false},
		{schedulerUser, "list", "", "secrets", "", "", false},
		{schedulerUser, "patch", "", "nodes", "", "", false},
		{schedulerUser, "update", "", "nodes", "", "", false},
		{schedulerUser, "delete", "", "nodes", "", "", false},
		{schedulerUser, "create", "", "pods", "", "default", false},
		{schedulerUser, "update", "scheduling.x-k8s.io", "podgroups", "", "default", false},
		{schedulerUser, "delete", "scheduling.x-k8s.io", "podgroups", "", "default", false},
		{schedulerUser, "update", "apps", "statefulsets", "", "default", false},
		{schedulerUser, "update", "", "configmaps", "", "tessera-system", false},
		{schedulerUser, "create", "rbac.authorization.k8s.io", "rolebindings", "", "default", false},
		{schedulerUser, "update", "coordination.k8s.io", "leases", "", "default", false},
	}
	for _, c := range checks {
		name := fmt.Sprintf("%s %s %s/%s/%s in %q", strings.TrimPrefix(c.user, "system:serviceaccount:tessera-system:"), c.verb, c.group, c.resource, c.subresource, c.namespace)
		t.Run(name, func(t *testing.T) {
			sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User:   c.user,
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:tessera-system", "system:authenticated"},
				ResourceAttributes: &authzv1.ResourceAttributes{
					Verb: c.verb, Group: c.group, Resource: c.resource, Subresource: c.subresource, Namespace: c.namespace,
				},
			}}
			got, err := e.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Status.Allowed != c.allowed {
				t.Errorf("allowed = %t, want %t (%s)", got.Status.Allowed, c.allowed, got.Status.Reason)
			}
		})
	}
}

// impersonate returns a client acting as user, with the node-name extra a
// pod-bound service-account token carries when node is set.
func impersonate(t *testing.T, user, node string) kubernetes.Interface {
	t.Helper()
	cfg := rest.CopyConfig(testCluster.RESTConfig())
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:tessera-system", "system:authenticated"}}
	if node != "" {
		cfg.Impersonate.Extra = map[string][]string{nodeNameExtra: {node}}
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDevicePluginConfinedToItsNode makes real writes as the device plugin
// (impersonated, with the node name its token would carry): its own node
// and pods on its node may be patched; other nodes and pods on other nodes
// may not, and neither may anything when the token names no node.
func TestDevicePluginConfinedToItsNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := env(t)
	ns := createNamespace(ctx, t, "vap")
	defer freeRealNode(t, e, ns)
	own := holdSlices(ctx, t, e, ns, "own", 1)
	other, err := e.Client.CoreV1().Pods(ns).Create(ctx, scenario.SlicePod(ns, "other", 1,
		scenario.PodOptions{NodeSelector: map[string]string{scenario.SimulatedLabel: "true"}}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.WaitPods(ctx, ns, "app.kubernetes.io/part-of=tessera-e2e", 2, time.Minute, "bound", scenario.Bound); err != nil {
		t.Fatal(err)
	}
	otherNode := cluster.SimulatedNodeName(0)
	patch := []byte(`{"metadata":{"annotations":{"tessera.dev/e2e-vap":"x"}}}`)
	plugin := impersonate(t, devicePluginUser, testCluster.RealNodeName)
	noNode := impersonate(t, devicePluginUser, "")
	tests := map[string]struct {
		do      func() error
		allowed bool
		msg     string
	}{
		"own node": {func() error {
			_, err := plugin.CoreV1().Nodes().Patch(ctx, testCluster.RealNodeName, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}, true, ""},
		"other node": {func() error {
			_, err := plugin.CoreV1().Nodes().Patch(ctx, otherNode, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}, false, "may not modify node " + otherNode},
		"pod on own node": {func() error {
			_, err := plugin.CoreV1().Pods(ns).Patch(ctx, own.Name, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}, true, ""},
		"pod on other node": {func() error {
			_, err := plugin.CoreV1().Pods(ns).Patch(ctx, other.Name, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}, false, "may not modify pods on other nodes"},
		"own node, token names no node": {func() error {
			_, err := noNode.CoreV1().Nodes().Patch(ctx, testCluster.RealNodeName, types.MergePatchType, patch, metav1.PatchOptions{})
			return err
		}, false, "names no node"},
		"read a secret": {func() error {
			_, err := plugin.CoreV1().Secrets(cluster.TesseraNamespace).List(ctx, metav1.ListOptions{})
			return err
		}, false, "forbidden"},
		"delete a pod on own node": {func() error {
			return plugin.CoreV1().Pods(ns).Delete(ctx, own.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		}, false, "forbidden"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.do()
			switch {
			case tc.allowed && err != nil:
				t.Errorf("denied: %v", err)
			case !tc.allowed && err == nil:
				t.Errorf("allowed, want denied")
			case !tc.allowed && (!apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.msg)):
				t.Errorf("error %v, want a denial containing %q", err, tc.msg)
			}
		})
	}
	// Leave the real node as it was.
	_, _ = e.Client.CoreV1().Nodes().Patch(ctx, testCluster.RealNodeName, types.MergePatchType,
		[]byte(`{"metadata":{"annotations":{"tessera.dev/e2e-vap":null}}}`), metav1.PatchOptions{})
}

// TestContainersHardened checks the running Tessera pods: the scheduler is
// non-root with a read-only root file system; the device plugin runs as root
// (it must create its socket in the kubelet's root-owned
// /var/lib/kubelet/device-plugins and read the PodResources socket) but with
// a read-only root file system, no capabilities and no privilege escalation.
func TestContainersHardened(t *testing.T) {
	ctx := context.Background()
	e := env(t)
	pods, err := e.Client.CoreV1().Pods(cluster.TesseraNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, c := range p.Spec.Containers {
			sc := c.SecurityContext
			if sc == nil {
				t.Errorf("%s/%s has no securityContext", p.Name, c.Name)
				continue
			}
			seen[strings.Join(strings.Split(p.Name, "-")[:2], "-")] = true
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s/%s: root file system is writable", p.Name, c.Name)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s/%s: privilege escalation allowed", p.Name, c.Name)
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Errorf("%s/%s: privileged", p.Name, c.Name)
			}
			if sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) > 0 {
				t.Errorf("%s/%s: capabilities %+v, want drop ALL and add none", p.Name, c.Name, sc.Capabilities)
			}
			root := sc.RunAsUser != nil && *sc.RunAsUser == 0
			if strings.HasPrefix(p.Name, "tessera-device-plugin") {
				continue // documented: root for the kubelet's sockets
			}
			if root || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				t.Errorf("%s/%s: not confined to a non-root user", p.Name, c.Name)
			}
		}
		// Host paths: only the kubelet's device-plugin and PodResources
		// directories (the local cluster keeps the latter under its own
		// directory).
		for _, v := range p.Spec.Volumes {
			if v.HostPath != nil && !strings.HasPrefix(v.HostPath.Path, "/var/lib/kubelet/") && !strings.HasPrefix(v.HostPath.Path, testCluster.Dir+"/") {
				t.Errorf("%s mounts host path %s", p.Name, v.HostPath.Path)
			}
		}
	}
	if len(seen) < 2 {
		t.Errorf("found %d Tessera components running, want the scheduler and the device plugin: %v", len(seen), seen)
	}
}
