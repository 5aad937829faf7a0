package viz

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	schedv1beta1 "k8s.io/api/scheduling/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	pgv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

// PodGroupGVR is the scheduler-plugins PodGroup API.
var PodGroupGVR = schema.GroupVersionResource{Group: "scheduling.x-k8s.io", Version: "v1alpha1", Resource: "podgroups"}

// NativePodGroupGVR is the native PodGroup API (GenericWorkload).
var NativePodGroupGVR = schedv1beta1.SchemeGroupVersion.WithResource("podgroups")

// Clients are what Collect reads through.
type Clients struct {
	Kube    kubernetes.Interface
	Dynamic dynamic.Interface
}

// CollectOptions say what to list.
type CollectOptions struct {
	// Namespace scopes gangs and events; "" is all namespaces. Nodes and
	// the pods holding slices are always listed cluster-wide: a GPU's
	// slices are used whatever namespace the pods are in.
	Namespace string
	// Events lists the scheduler's events (for last reasons).
	Events bool
	// Pod, when set (namespace/name is Namespace + Pod), also lists every
	// event about that pod, whoever reported it (kubelet, device plugin).
	Pod string
}

// Collect lists nodes, pods, PodGroups (of each API the server serves) and
// events: one List per resource, concurrently, never one call per node, so
// it stays fast on 1000 nodes.
func Collect(ctx context.Context, c Clients, opts CollectOptions) (*Input, error) {
	in := &Input{}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	warn := func(format string, args ...any) {
		mu.Lock()
		in.Warnings = append(in.Warnings, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	run := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	run(func() {
		l, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			fail(fmt.Errorf("listing nodes: %w", err))
			return
		}
		in.Nodes = l.Items
	})
	run(func() {
		l, err := c.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if apierrors.IsForbidden(err) && opts.Namespace != "" {
			// Without cluster-wide pod access the map can only show this
			// namespace's pods; say so rather than fail.
			warn("cannot list pods in all namespaces (forbidden); slices held by pods outside %s show as free", opts.Namespace)
			l, err = c.Kube.CoreV1().Pods(opts.Namespace).List(ctx, metav1.ListOptions{})
		}
		if err != nil {
			fail(fmt.Errorf("listing pods: %w", err))
			return
		}
		in.Pods = l.Items
	})
	run(func() {
		gs, err := listGroups(ctx, c, opts.Namespace, warn)
		if err != nil {
			fail(err)
			return
		}
		mu.Lock()
		in.Groups = append(in.Groups, gs...)
		mu.Unlock()
	})
	if opts.Events {
		run(func() {
			evs, err := listSchedulerEvents(ctx, c.Kube, opts.Namespace)
			if err != nil {
				warn("cannot list events, so no scheduler reasons are shown: %v", err)
				return
			}
			mu.Lock()
			in.Events = append(in.Events, evs...)
			mu.Unlock()
		})
	}
	if opts.Pod != "" {
		run(func() {
			sel := fields.Set{"involvedObject.kind": "Pod", "involvedObject.name": opts.Pod}.AsSelector().String()
			l, err := c.Kube.CoreV1().Events(opts.Namespace).List(ctx, metav1.ListOptions{FieldSelector: sel})
			if err != nil {
				warn("cannot list the pod's events: %v", err)
				return
			}
			mu.Lock()
			in.Events = append(in.Events, l.Items...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return nil, errs[0]
	}
	in.Now = time.Now()
	return in, nil
}

// listSchedulerEvents lists what tessera-scheduler reported. The field
// selector keeps the answer small on a busy cluster; a server that rejects
// it gets an unfiltered list.
func listSchedulerEvents(ctx context.Context, kc kubernetes.Interface, ns string) ([]corev1.Event, error) {
	sel := fields.OneTermEqualSelector("reportingComponent", api.SchedulerName).String()
	l, err := kc.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if apierrors.IsBadRequest(err) {
		l, err = kc.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("listing events: %w", err)
	}
	return l.Items, nil
}

// served reports whether the server serves gvr; discovery errors count as
// not served (an aggregated API being down must not break the map).
func served(kc kubernetes.Interface, gvr schema.GroupVersionResource) bool {
	list, err := kc.Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
	if err != nil {
		return false
	}
	for _, r := range list.APIResources {
		if r.Name == gvr.Resource {
			return true
		}
	}
	return false
}

// listGroups lists PodGroups of each API the server serves.
func listGroups(ctx context.Context, c Clients, ns string, warn func(string, ...any)) ([]Group, error) {
	var out []Group
	if c.Dynamic != nil && served(c.Kube, PodGroupGVR) {
		l, err := c.Dynamic.Resource(PodGroupGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
		switch {
		case apierrors.IsForbidden(err):
			warn("cannot list %s PodGroups (forbidden): their gangs show without minMember", PodGroupGVR.GroupVersion())
		case err != nil:
			return nil, fmt.Errorf("listing %s PodGroups: %w", PodGroupGVR.GroupVersion(), err)
		default:
			for i := range l.Items {
				g, err := groupFromUnstructured(&l.Items[i])
				if err != nil {
					warn("%v", err)
					continue
				}
				out = append(out, g)
			}
		}
	}
	if served(c.Kube, NativePodGroupGVR) {
		l, err := c.Kube.SchedulingV1beta1().PodGroups(ns).List(ctx, metav1.ListOptions{})
		switch {
		case apierrors.IsForbidden(err):
			warn("cannot list %s PodGroups (forbidden)", NativePodGroupGVR.GroupVersion())
		case err != nil:
			return nil, fmt.Errorf("listing %s PodGroups: %w", NativePodGroupGVR.GroupVersion(), err)
		default:
			for i := range l.Items {
				out = append(out, GroupFromNative(&l.Items[i]))
			}
		}
	}
	return out, nil
}

func groupFromUnstructured(u *unstructured.Unstructured) (Group, error) {
	var pg pgv1alpha1.PodGroup
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &pg); err != nil {
		return Group{}, fmt.Errorf("reading PodGroup %s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return GroupFromPodGroup(&pg), nil
}

// GroupFromPodGroup reduces a scheduling.x-k8s.io PodGroup.
func GroupFromPodGroup(pg *pgv1alpha1.PodGroup) Group {
	return Group{Namespace: pg.Namespace, Name: pg.Name, Source: gang.SourcePodGroup, MinMember: int(pg.Spec.MinMember),
		Required: pg.Annotations[api.AnnotationTopologyRequired], Preferred: pg.Annotations[api.AnnotationTopologyPreferred],
		Created: pg.CreationTimestamp.Time, Phase: string(pg.Status.Phase)}
}

// GroupFromNative reduces a scheduling.k8s.io/v1beta1 PodGroup the way the
// scheduler reads it: the gang policy's minCount, the first topology
// constraint unless the tessera.dev annotation says otherwise, and no gang
// at all for the basic policy.
func GroupFromNative(pg *schedv1beta1.PodGroup) Group {
	g := Group{Namespace: pg.Namespace, Name: pg.Name, Source: gang.SourceNative,
		Required: pg.Annotations[api.AnnotationTopologyRequired], Preferred: pg.Annotations[api.AnnotationTopologyPreferred],
		Created: pg.CreationTimestamp.Time}
	if gp := pg.Spec.SchedulingPolicy.Gang; gp != nil {
		g.MinMember = int(gp.MinCount)
	} else {
		g.NotGang = true
	}
	if c := pg.Spec.SchedulingConstraints; c != nil && len(c.Topology) > 0 && c.Topology[0].Key != "" && g.Required == "" {
		g.Required = c.Topology[0].Key
	}
	return g
}
