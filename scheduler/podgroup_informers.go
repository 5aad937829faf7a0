package scheduler

import (
	"context"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	schedv1beta1 "k8s.io/api/scheduling/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	pgv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"

	"github.com/tessera-gpu/tessera/api"
	"github.com/tessera-gpu/tessera/gang"
)

var (
	lwsGVR            = schema.GroupVersionResource{Group: "leaderworkerset.x-k8s.io", Version: "v1", Resource: "leaderworkersets"}
	podGroupGVR       = schema.GroupVersionResource{Group: "scheduling.x-k8s.io", Version: "v1alpha1", Resource: "podgroups"}
	nativePodGroupGVR = schedv1beta1.SchemeGroupVersion.WithResource("podgroups")
)

// served reports whether the API server serves gvr (discovery).
func (pl *Tessera) served(gvr schema.GroupVersionResource) bool {
	list, err := pl.handle.ClientSet().Discovery().ServerResourcesForGroupVersion(gvr.GroupVersion().String())
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

// watchGroupAPIs starts a PodGroup informer for each PodGroup API the
// cluster serves, looking again every discoveryInterval for the ones not
// served yet (a CRD installed after the scheduler started).
func (pl *Tessera) watchGroupAPIs(ctx context.Context) {
	logger := pl.logger
	crd, native, lws := false, false, false
	for {
		if !crd && pl.served(podGroupGVR) {
			if err := pl.startPodGroupInformer(ctx); err != nil {
				logger.Error(err, "Cannot watch scheduling.x-k8s.io PodGroups")
			} else {
				crd = true
				logger.Info("Watching PodGroups", "api", podGroupGVR.GroupVersion().String())
			}
		}
		if !native && pl.served(nativePodGroupGVR) {
			pl.startNativeInformer(ctx)
			native = true
			logger.Info("Watching PodGroups", "api", nativePodGroupGVR.GroupVersion().String())
		}
		if !lws && pl.served(lwsGVR) {
			if err := pl.startLWSInformer(ctx); err != nil {
				logger.Error(err, "Cannot watch LeaderWorkerSets")
			} else {
				lws = true
				logger.Info("Watching LeaderWorkerSets (startup policy)", "api", lwsGVR.GroupVersion().String())
			}
		}
		if crd && native && lws {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-pl.clock.After(pl.args.discoveryInterval()):
		}
	}
}

func (pl *Tessera) startPodGroupInformer(ctx context.Context) error {
	return pl.startDynamicInformer(ctx, podGroupGVR, cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { pl.podGroupChanged(obj) },
		UpdateFunc: func(_, obj any) { pl.podGroupChanged(obj) },
		DeleteFunc: func(obj any) { pl.groupDeleted(obj) },
	})
}

// startDynamicInformer watches gvr (a CRD, read as unstructured) with h.
func (pl *Tessera) startDynamicInformer(ctx context.Context, gvr schema.GroupVersionResource, h cache.ResourceEventHandler) error {
	cfg := pl.handle.KubeConfig()
	if cfg == nil {
		return fmt.Errorf("no kubeconfig in the framework handle")
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	f := dynamicinformer.NewDynamicSharedInformerFactory(dc, 0)
	if _, err := f.ForResource(gvr).Informer().AddEventHandler(h); err != nil {
		return err
	}
	f.Start(ctx.Done())
	return nil
}

// startLWSInformer watches LeaderWorkerSets for one field: a group whose
// LWS starts LeaderReady gets its workers only once the leader is Ready, so
// its leader must bind first (gangRegistry.leaderReady). Everything else
// about an LWS group comes from its pods.
func (pl *Tessera) startLWSInformer(ctx context.Context) error {
	changed := func(obj any) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return
		}
		policy, _, _ := unstructured.NestedString(u.Object, "spec", "startupPolicy")
		pl.gangs.setLWSLeaderReady(u.GetNamespace()+"/"+u.GetName(), policy == lwsLeaderReady)
	}
	return pl.startDynamicInformer(ctx, lwsGVR, cache.ResourceEventHandlerFuncs{
		AddFunc:    changed,
		UpdateFunc: func(_, obj any) { changed(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if m, ok := obj.(metav1.Object); ok {
				pl.gangs.setLWSLeaderReady(m.GetNamespace()+"/"+m.GetName(), false)
			}
		},
	})
}

// lwsLeaderReady is LWS's spec.startupPolicy that creates a group's
// workers only once its leader is Ready.
const lwsLeaderReady = "LeaderReady"

func (pl *Tessera) startNativeInformer(ctx context.Context) {
	f := informers.NewSharedInformerFactory(pl.handle.ClientSet(), 0)
	inf := f.Scheduling().V1beta1().PodGroups().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { pl.nativeGroupChanged(obj) },
		UpdateFunc: func(_, obj any) { pl.nativeGroupChanged(obj) },
		DeleteFunc: func(obj any) { pl.groupDeleted(obj) },
	})
	f.Start(ctx.Done())
}

func (pl *Tessera) podGroupChanged(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	var pg pgv1alpha1.PodGroup
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &pg); err != nil {
		pl.logger.Error(err, "Cannot read PodGroup", "podGroup", klog.KObj(u))
		return
	}
	g := &groupInfo{source: gang.SourcePodGroup, minMember: int(pg.Spec.MinMember), created: pg.CreationTimestamp.Time,
		required: pg.Annotations[api.AnnotationTopologyRequired], preferred: pg.Annotations[api.AnnotationTopologyPreferred], obj: u}
	if pg.Spec.ScheduleTimeoutSeconds != nil && *pg.Spec.ScheduleTimeoutSeconds > 0 {
		g.timeout = time.Duration(*pg.Spec.ScheduleTimeoutSeconds) * time.Second
	}
	key := pg.Namespace + "/" + pg.Name
	pl.gangs.setGroup(key, g)
	pl.status.enqueue(key)
}

func (pl *Tessera) nativeGroupChanged(obj any) {
	pg, ok := obj.(*schedv1beta1.PodGroup)
	if !ok {
		return
	}
	g := &groupInfo{source: gang.SourceNative, created: pg.CreationTimestamp.Time,
		required: pg.Annotations[api.AnnotationTopologyRequired], preferred: pg.Annotations[api.AnnotationTopologyPreferred], obj: pg}
	if gp := pg.Spec.SchedulingPolicy.Gang; gp != nil {
		g.minMember = int(gp.MinCount)
	} else {
		g.notGang = true
	}
	if c := pg.Spec.SchedulingConstraints; c != nil && len(c.Topology) > 0 && c.Topology[0].Key != "" && g.required == "" {
		g.required = c.Topology[0].Key
	}
	if pg.Spec.Priority != nil {
		g.priority = *pg.Spec.Priority
	}
	pl.gangs.setGroup(pg.Namespace+"/"+pg.Name, g)
}

func (pl *Tessera) groupDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	pl.gangs.setGroup(m.GetNamespace()+"/"+m.GetName(), nil)
}

// groupStatus derives a PodGroup's status from its member pods.
func (r *gangRegistry) groupStatus(key string, minMember int) pgv1alpha1.PodGroupStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	var st pgv1alpha1.PodGroupStatus
	scheduled := 0
	for _, m := range r.members[key] {
		if m.pod == nil {
			continue
		}
		if m.pod.Spec.NodeName != "" {
			scheduled++
		}
		switch m.pod.Status.Phase {
		case v1.PodRunning:
			st.Running++
		}
	}
	for _, ok := range r.done[key] {
		if ok {
			st.Succeeded++
		} else {
			st.Failed++
		}
	}
	min32 := int32(max(minMember, 1))
	switch {
	case st.Failed > 0:
		st.Phase = pgv1alpha1.PodGroupFailed
	case st.Succeeded >= min32:
		st.Phase = pgv1alpha1.PodGroupFinished
	case st.Running+st.Succeeded >= min32:
		st.Phase = pgv1alpha1.PodGroupRunning
	case scheduled >= minMember && scheduled > 0:
		st.Phase = pgv1alpha1.PodGroupScheduling
	default:
		st.Phase = pgv1alpha1.PodGroupPending
	}
	return st
}
