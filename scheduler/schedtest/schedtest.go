// Package schedtest runs the Tessera scheduler in-process against a
// control-plane-only local cluster (e2e/cluster with RealNode false), for
// tests that need the real scheduler but not a real node: integration,
// restart and failover, load. It is test support, not part of the scheduler.
package schedtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
	"k8s.io/kubernetes/cmd/kube-scheduler/app/options"
	k8sscheduler "k8s.io/kubernetes/pkg/scheduler"
	"sigs.k8s.io/yaml"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/manifests/base/crds"
	"github.com/tessera-gpu/tessera/scheduler"
)

// InstallCRD applies the shipped PodGroup CRD and waits until it is served.
func InstallCRD(ctx context.Context, cfg *rest.Config) error {
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(crds.PodGroups, &crd); err != nil {
		return fmt.Errorf("decoding the PodGroup CRD: %w", err)
	}
	cs, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if _, err := cs.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, &crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the PodGroup CRD: %w", err)
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := cs.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range got.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

// GrantSchedulerRBAC gives the kube-scheduler identity what Tessera needs on
// top of system:kube-scheduler (manifests/base/scheduler-rbac.yaml).
func GrantSchedulerRBAC(ctx context.Context, client kubernetes.Interface) error {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "tessera-scheduler"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"patch"}},
			{APIGroups: []string{"scheduling.x-k8s.io"}, Resources: []string{"podgroups"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"scheduling.x-k8s.io"}, Resources: []string{"podgroups/status"}, Verbs: []string{"patch", "update"}},
			{APIGroups: []string{"scheduling.k8s.io"}, Resources: []string{"podgroups"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"scheduling.k8s.io"}, Resources: []string{"podgroups/status"}, Verbs: []string{"get", "update"}},
			{APIGroups: []string{"leaderworkerset.x-k8s.io"}, Resources: []string{"leaderworkersets"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceclaimtemplates"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tessera-scheduler"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: "system:kube-scheduler"}},
	}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating ClusterRole %s: %w", role.Name, err)
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating ClusterRoleBinding %s: %w", binding.Name, err)
	}
	return nil
}

// Options say how to run one scheduler.
type Options struct {
	// Kubeconfig of the scheduler's identity.
	Kubeconfig string
	// ArgsYAML are the Tessera plugin's args.
	ArgsYAML string
	// Dir holds the generated configuration file.
	Dir string
	// LeaderElect runs the scheduler behind a Lease (kube-system/
	// tessera-scheduler) with client-go's leader election, as the
	// kube-scheduler does, but with short timings, and without the
	// process exit kube-scheduler does on losing the lease: Stop is the
	// crash. Identity names the replica.
	LeaderElect bool
	Identity    string
	// Lease timings; zero: 3s duration, 2s renew deadline, 250ms retry.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// Scheduler is an in-process tessera-scheduler.
type Scheduler struct {
	cancel  context.CancelFunc
	done    chan struct{}
	leading chan struct{}
	mu      sync.Mutex
	err     error
	// sched is the scheduler being run, for WaitingPods.
	sched *k8sscheduler.Scheduler
}

// WaitingPods returns namespace/name of the pods this scheduler holds at
// Permit (Tessera's gang barrier), sorted. Tests use it to prove the
// scheduler has tried a pod before they assert that it was not bound.
func (s *Scheduler) WaitingPods() []string {
	var out []string
	for _, fw := range s.sched.Profiles {
		fw.IterateOverWaitingPods(func(wp fwk.WaitingPod) {
			p := wp.GetPod()
			out = append(out, p.Namespace+"/"+p.Name)
		})
	}
	slices.Sort(out)
	return out
}

// setupMu serialises app.Setup: it registers global metrics and flags.
var setupMu sync.Mutex

// Start builds the scheduler from the default tessera-scheduler
// configuration, as cmd/tessera-scheduler does, and runs it until Stop.
func Start(ctx context.Context, o Options) (*Scheduler, error) {
	setupMu.Lock()
	defer setupMu.Unlock()
	if o.Dir == "" {
		return nil, errors.New("schedtest: Options.Dir must be set")
	}
	cfgPath := filepath.Join(o.Dir, fmt.Sprintf("config-%s-%d.yaml", o.Identity, time.Now().UnixNano()))
	// Leader election is done here, not by app.Run (which exits the
	// process when the lease is lost), so the configuration turns it off.
	cfg := scheduler.DefaultConfig(scheduler.ConfigOptions{Kubeconfig: o.Kubeconfig, ArgsYAML: o.ArgsYAML})
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	opts := options.NewOptions()
	opts.ConfigFile = cfgPath
	opts.SecureServing.BindPort = 0
	if err := opts.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, fmt.Errorf("feature gates: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	if o.Identity != "" {
		runCtx = klog.NewContext(runCtx, klog.FromContext(runCtx).WithValues("replica", o.Identity))
	}
	cc, sched, err := app.Setup(runCtx, opts, app.WithPlugin(scheduler.Name, scheduler.New))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("setting up the scheduler: %w", err)
	}
	s := &Scheduler{cancel: cancel, done: make(chan struct{}), leading: make(chan struct{}), sched: sched}
	run := func(ctx context.Context) {
		close(s.leading)
		sched.Run(ctx)
	}
	go func() {
		defer close(s.done)
		cc.EventBroadcaster.StartRecordingToSink(runCtx.Done())
		defer cc.EventBroadcaster.Shutdown()
		cc.InformerFactory.Start(runCtx.Done())
		if cc.DynInformerFactory != nil {
			cc.DynInformerFactory.Start(runCtx.Done())
		}
		cc.InformerFactory.WaitForCacheSync(runCtx.Done())
		if cc.DynInformerFactory != nil {
			cc.DynInformerFactory.WaitForCacheSync(runCtx.Done())
		}
		if err := sched.WaitForHandlersSync(runCtx); err != nil && runCtx.Err() == nil {
			s.setErr(fmt.Errorf("scheduler handlers did not sync: %w", err))
		}
		defer cc.InformerFactory.Shutdown()
		if !o.LeaderElect {
			run(runCtx)
			return
		}
		lock, err := resourcelock.New(resourcelock.LeasesResourceLock, "kube-system", api.SchedulerName,
			cc.Client.CoreV1(), cc.Client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: o.Identity})
		if err != nil {
			s.setErr(fmt.Errorf("leader election lock: %w", err))
			return
		}
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:          lock,
			LeaseDuration: orDefault(o.LeaseDuration, 3*time.Second),
			RenewDeadline: orDefault(o.RenewDeadline, 2*time.Second),
			RetryPeriod:   orDefault(o.RetryPeriod, 250*time.Millisecond),
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: run,
				OnStoppedLeading: func() {},
			},
			Name: api.SchedulerName,
		})
		if err != nil {
			s.setErr(fmt.Errorf("leader elector: %w", err))
			return
		}
		le.Run(runCtx)
	}()
	return s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func (s *Scheduler) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

// Err is the first error the scheduler's goroutine hit, if any.
func (s *Scheduler) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Leading is closed once the scheduler schedules (at once without leader
// election).
func (s *Scheduler) Leading() <-chan struct{} { return s.leading }

// Stop ends the scheduler as a crash would: no lease is released, in-flight
// work is abandoned. It returns once the scheduler's goroutine is done.
func (s *Scheduler) Stop() {
	s.cancel()
	<-s.done
}

// LeaseHolder returns the current holder of the scheduler's Lease.
func LeaseHolder(ctx context.Context, client kubernetes.Interface) (string, error) {
	var l *coordinationv1.Lease
	l, err := client.CoordinationV1().Leases("kube-system").Get(ctx, api.SchedulerName, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if l.Spec.HolderIdentity == nil {
		return "", nil
	}
	return *l.Spec.HolderIdentity, nil
}

// Metric reads the first sample of a gauge or counter named name from the
// legacy registry, where an in-process scheduler's Tessera metrics live.
func Metric(name string) (float64, bool, error) {
	mfs, err := legacyregistry.DefaultGatherer.Gather()
	if err != nil {
		return 0, false, fmt.Errorf("gathering metrics: %w", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		if g := mf.GetMetric()[0].GetGauge(); g != nil {
			return g.GetValue(), true, nil
		}
		if c := mf.GetMetric()[0].GetCounter(); c != nil {
			return c.GetValue(), true, nil
		}
	}
	return 0, false, nil
}
