package deviceplugin

import (
	"context"
	"maps"
	"sync"

	corev1 "k8s.io/api/core/v1"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/tessera-gpu/tessera/deviceplugin/slicing"
)

type fakeNode struct {
	mu      sync.Mutex
	labels  map[string]string
	patches []NodeMetadata
	err     error
}

func (n *fakeNode) Labels(context.Context) (map[string]string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.labels), nil
}

func (n *fakeNode) setLabels(l map[string]string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.labels = l
}

func (n *fakeNode) PatchNode(_ context.Context, a, l map[string]*string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.err != nil {
		return n.err
	}
	n.patches = append(n.patches, NodeMetadata{Annotations: a, Labels: l})
	return nil
}

func (n *fakeNode) last() (NodeMetadata, int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.patches) == 0 {
		return NodeMetadata{}, 0
	}
	return n.patches[len(n.patches)-1], len(n.patches)
}

type podEvent struct{ pod, typ, reason, msg string }

type fakePods struct {
	mu      sync.Mutex
	patches map[string]string // ns/name -> value
	events  []podEvent
}

func (f *fakePods) PatchPodAnnotation(_ context.Context, ns, name, key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.patches == nil {
		f.patches = map[string]string{}
	}
	f.patches[ns+"/"+name+"@"+key] = value
	return nil
}

func (f *fakePods) Event(pod *corev1.Pod, typ, reason, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, podEvent{pod.Namespace + "/" + pod.Name, typ, reason, msg})
}

// staticPending serves a fixed pod set.
type staticPending struct {
	mu        sync.Mutex
	pending   []slicing.Pending
	confirmed []slicing.Pending
	pods      map[string]*corev1.Pod
}

func (s *staticPending) Pending() []slicing.Pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending
}

func (s *staticPending) Pod(ns, name string) (*corev1.Pod, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pods[ns+"/"+name]
	return p, ok
}

// set replaces the pods and derives the pending list like PodCache does.
func (s *staticPending) set(pods ...*corev1.Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods = map[string]*corev1.Pod{}
	s.pending, s.confirmed = nil, nil
	for _, p := range pods {
		s.pods[p.Namespace+"/"+p.Name] = p
		if pp, ok := PendingFromPod(p); ok {
			s.pending = append(s.pending, pp)
		} else if pp, ok := confirmedFromPod(p); ok {
			s.confirmed = append(s.confirmed, pp)
		}
	}
	SortPending(s.pending)
	SortPending(s.confirmed)
}

func (s *staticPending) Readmitted() []slicing.Pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.confirmed
}

type fakePodResources struct {
	mu   sync.Mutex
	resp *podresourcesapi.ListPodResourcesResponse
}

func (f *fakePodResources) List(context.Context) (*podresourcesapi.ListPodResourcesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.resp == nil {
		return &podresourcesapi.ListPodResourcesResponse{}, nil
	}
	return f.resp, nil
}
