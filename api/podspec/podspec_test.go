package podspec

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/tessera-gpu/tessera/api"
)

func q(s string) resource.Quantity { return resource.MustParse(s) }

// ctr is a container asking for slices: req and lim are quantities, ""
// leaves that list without the resource.
func ctr(req, lim string) v1.Container {
	var c v1.Container
	if req != "" {
		c.Resources.Requests = v1.ResourceList{api.ResourceName: q(req)}
	}
	if lim != "" {
		c.Resources.Limits = v1.ResourceList{api.ResourceName: q(lim)}
	}
	return c
}

func lim(n string) v1.Container { return ctr("", n) }

func sidecar(c v1.Container) v1.Container {
	c.RestartPolicy = ptr.To(v1.ContainerRestartPolicyAlways)
	return c
}

func TestSliceRequest(t *testing.T) {
	tests := map[string]struct {
		init, app  []v1.Container
		want       int
		containers []int
	}{
		"no containers":           {want: 0},
		"no slice resource":       {app: []v1.Container{{Resources: v1.ResourceRequirements{Limits: v1.ResourceList{v1.ResourceCPU: q("2")}}}}, want: 0},
		"limit only":              {app: []v1.Container{lim("2")}, want: 2, containers: []int{2}},
		"request only":            {app: []v1.Container{ctr("3", "")}, want: 3, containers: []int{3}},
		"request equals limit":    {app: []v1.Container{ctr("2", "2")}, want: 2, containers: []int{2}},
		"request wins over limit": {app: []v1.Container{ctr("1", "4")}, want: 1, containers: []int{1}},
		"containers summed":       {app: []v1.Container{lim("2"), lim("1"), {}}, want: 3, containers: []int{2, 1}},
		"zero":                    {app: []v1.Container{lim("0")}, want: 0},
		"negative counts as 0":    {app: []v1.Container{lim("-3"), lim("2")}, want: 2, containers: []int{2}},
		"fraction rounds up":      {app: []v1.Container{lim("500m")}, want: 1, containers: []int{1}},
		"huge is capped":          {app: []v1.Container{lim("1e20")}, want: MaxSliceRequest, containers: []int{MaxSliceRequest}},
		"beyond int64 is capped":  {app: []v1.Container{lim("9223372036854775808")}, want: MaxSliceRequest, containers: []int{MaxSliceRequest}},
		"sum is capped":           {app: []v1.Container{lim("1048576"), lim("1048576")}, want: MaxSliceRequest, containers: []int{MaxSliceRequest, MaxSliceRequest}},
		"just under the cap":      {app: []v1.Container{lim("1048575")}, want: 1048575, containers: []int{1048575}},
		"init container larger":   {init: []v1.Container{lim("4")}, app: []v1.Container{lim("2"), lim("1")}, want: 4, containers: []int{4, 2, 1}},
		"init container smaller":  {init: []v1.Container{lim("1")}, app: []v1.Container{lim("2"), lim("1")}, want: 3, containers: []int{1, 2, 1}},
		"init containers: the largest, not the sum": {init: []v1.Container{lim("3"), lim("3")}, app: []v1.Container{lim("1")}, want: 3,
			containers: []int{3, 3, 1}},
		"sidecar adds to the app containers": {init: []v1.Container{sidecar(lim("1"))}, app: []v1.Container{lim("2"), lim("1")}, want: 4,
			containers: []int{1, 2, 1}},
		"init max beats app sum plus later sidecar": {init: []v1.Container{lim("4"), sidecar(lim("1"))}, app: []v1.Container{lim("2"), lim("1")}, want: 4,
			containers: []int{4, 1, 2, 1}},
		"sidecar before an init container adds to it": {init: []v1.Container{sidecar(lim("2")), lim("4")}, app: []v1.Container{lim("1")}, want: 6,
			containers: []int{2, 4, 1}},
		"sidecar after an init container does not": {init: []v1.Container{lim("4"), sidecar(lim("2"))}, app: []v1.Container{lim("1")}, want: 4,
			containers: []int{4, 2, 1}},
		"only sidecars": {init: []v1.Container{sidecar(lim("1")), sidecar(lim("2"))}, want: 3, containers: []int{1, 2}},
		"init only":     {init: []v1.Container{lim("2")}, want: 2, containers: []int{2}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod := &v1.Pod{Spec: v1.PodSpec{InitContainers: tc.init, Containers: tc.app}}
			if got := SliceRequest(pod); got != tc.want {
				t.Errorf("SliceRequest = %d, want %d", got, tc.want)
			}
			if diff := cmp.Diff(tc.containers, ContainerSliceRequests(pod)); diff != "" {
				t.Errorf("ContainerSliceRequests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGangOf(t *testing.T) {
	const (
		pg     = api.LabelPodGroup
		lws    = api.LabelLWSGroupKey
		native = "native"
	)
	tests := map[string]struct {
		labels map[string]string
		group  *v1.PodSchedulingGroup
		want   GangRef
		ok     bool
	}{
		"none":                   {},
		"PodGroup label":         {labels: map[string]string{pg: "a"}, want: GangRef{Key: "ns/a", Name: "a", Source: GangPodGroup}, ok: true},
		"native schedulingGroup": {group: &v1.PodSchedulingGroup{PodGroupName: ptr.To(native)}, want: GangRef{Key: "ns/native", Name: native, Source: GangNative}, ok: true},
		"LWS group key":          {labels: map[string]string{lws: "k"}, want: GangRef{Key: "ns/k", Name: "k", Source: GangLWS}, ok: true},
		"PodGroup beats native and LWS": {labels: map[string]string{pg: "a", lws: "k"}, group: &v1.PodSchedulingGroup{PodGroupName: ptr.To(native)},
			want: GangRef{Key: "ns/a", Name: "a", Source: GangPodGroup}, ok: true},
		"native beats LWS": {labels: map[string]string{lws: "k"}, group: &v1.PodSchedulingGroup{PodGroupName: ptr.To(native)},
			want: GangRef{Key: "ns/native", Name: native, Source: GangNative}, ok: true},
		"PodGroup beats LWS":             {labels: map[string]string{pg: "a", lws: "k"}, want: GangRef{Key: "ns/a", Name: "a", Source: GangPodGroup}, ok: true},
		"empty PodGroup label is absent": {labels: map[string]string{pg: "", lws: "k"}, want: GangRef{Key: "ns/k", Name: "k", Source: GangLWS}, ok: true},
		"empty native name is absent": {labels: map[string]string{lws: "k"}, group: &v1.PodSchedulingGroup{PodGroupName: ptr.To("")},
			want: GangRef{Key: "ns/k", Name: "k", Source: GangLWS}, ok: true},
		"schedulingGroup without a name": {group: &v1.PodSchedulingGroup{}},
		"empty LWS key":                  {labels: map[string]string{lws: ""}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Labels: tc.labels}, Spec: v1.PodSpec{SchedulingGroup: tc.group}}
			got, ok := GangOf(pod)
			if ok != tc.ok {
				t.Errorf("ok = %v, want %v", ok, tc.ok)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("GangOf (-want +got):\n%s", diff)
			}
			if InGang(pod) != tc.ok {
				t.Errorf("InGang = %v, want %v", InGang(pod), tc.ok)
			}
		})
	}
}

func TestLWSSize(t *testing.T) {
	tests := map[string]struct {
		ann  map[string]string
		want int
	}{
		"absent":   {},
		"size":     {ann: map[string]string{api.AnnotationLWSSize: "4"}, want: 4},
		"zero":     {ann: map[string]string{api.AnnotationLWSSize: "0"}},
		"negative": {ann: map[string]string{api.AnnotationLWSSize: "-2"}},
		"garbage":  {ann: map[string]string{api.AnnotationLWSSize: "four"}},
		"empty":    {ann: map[string]string{api.AnnotationLWSSize: ""}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := LWSSize(&v1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}}); got != tc.want {
				t.Errorf("LWSSize = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestHeldSlices(t *testing.T) {
	const (
		good  = "GPU-a::0,GPU-a::1"
		other = "GPU-b::3"
	)
	ids := func(s string) []api.SliceID {
		out, err := api.ParseSliceList(s)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	alloc, assign := api.AnnotationSlicesAllocated, api.AnnotationSliceAssignment
	tests := map[string]struct {
		ann  map[string]string
		want []api.SliceID
		from SliceSource
		// errs are the annotations named by the returned error, in order.
		errs []string
	}{
		"none":                                        {},
		"assignment only":                             {ann: map[string]string{assign: good}, want: ids(good), from: HeldAssignment},
		"allocated only":                              {ann: map[string]string{alloc: other}, want: ids(other), from: HeldAllocated},
		"allocated wins":                              {ann: map[string]string{assign: good, alloc: other}, want: ids(other), from: HeldAllocated},
		"spaces are fine":                             {ann: map[string]string{assign: " GPU-a::0 , GPU-a::1 "}, want: ids(good), from: HeldAssignment},
		"malformed allocated falls back":              {ann: map[string]string{assign: good, alloc: "nope"}, want: ids(good), from: HeldAssignment, errs: []string{alloc}},
		"empty allocated falls back":                  {ann: map[string]string{assign: good, alloc: ""}, want: ids(good), from: HeldAssignment, errs: []string{alloc}},
		"blank allocated falls back":                  {ann: map[string]string{assign: good, alloc: "  "}, want: ids(good), from: HeldAssignment, errs: []string{alloc}},
		"duplicate in allocated":                      {ann: map[string]string{assign: good, alloc: "GPU-b::3,GPU-b::3"}, want: ids(good), from: HeldAssignment, errs: []string{alloc}},
		"malformed allocated alone":                   {ann: map[string]string{alloc: "GPU-a::x"}, errs: []string{alloc}},
		"malformed assignment alone":                  {ann: map[string]string{assign: "GPU-a"}, errs: []string{assign}},
		"empty assignment":                            {ann: map[string]string{assign: ""}, errs: []string{assign}},
		"both malformed":                              {ann: map[string]string{assign: "x", alloc: "y"}, errs: []string{alloc, assign}},
		"good allocated hides a malformed assignment": {ann: map[string]string{assign: "x", alloc: other}, want: ids(other), from: HeldAllocated},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, from, err := HeldSlices(&v1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}})
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ids (-want +got):\n%s", diff)
			}
			if from != tc.from {
				t.Errorf("from = %q, want %q", from, tc.from)
			}
			if diff := cmp.Diff(tc.errs, annotationsOf(err)); diff != "" {
				t.Errorf("errors name annotations (-want +got):\n%s\nerror: %v", diff, err)
			}
		})
	}
}

// annotationsOf lists the annotations err's *AnnotationErrors name.
func annotationsOf(err error) []string {
	if err == nil {
		return nil
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var out []string
	for _, e := range errs {
		var ae *AnnotationError
		if !errors.As(e, &ae) {
			return append(out, "not an AnnotationError: "+e.Error())
		}
		out = append(out, ae.Annotation)
	}
	return out
}

func TestAssignmentAndAllocated(t *testing.T) {
	tests := map[string]struct {
		ann              map[string]string
		read             func(*v1.Pod) ([]api.SliceID, bool, error)
		wantN            int
		present, wantErr bool
	}{
		"assignment absent":    {read: Assignment},
		"assignment":           {ann: map[string]string{api.AnnotationSliceAssignment: "G::0,G::1"}, read: Assignment, wantN: 2, present: true},
		"assignment malformed": {ann: map[string]string{api.AnnotationSliceAssignment: "G:0"}, read: Assignment, present: true, wantErr: true},
		"allocated absent":     {ann: map[string]string{api.AnnotationSliceAssignment: "G::0"}, read: Allocated},
		"allocated":            {ann: map[string]string{api.AnnotationSlicesAllocated: "G::0"}, read: Allocated, wantN: 1, present: true},
		"allocated empty":      {ann: map[string]string{api.AnnotationSlicesAllocated: ""}, read: Allocated, present: true, wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ids, present, err := tc.read(&v1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tc.ann}})
			if len(ids) != tc.wantN || present != tc.present || (err != nil) != tc.wantErr {
				t.Errorf("got %v, present %v, err %v; want %d IDs, present %v, error %v", ids, present, err, tc.wantN, tc.present, tc.wantErr)
			}
		})
	}
}

func TestShape(t *testing.T) {
	tests := map[string]struct {
		request, perGPU int
		whole           int
		wantErr         bool
	}{
		"one slice":            {request: 1, perGPU: 4},
		"a whole GPU's slices": {request: 4, perGPU: 4},
		"two whole GPUs":       {request: 8, perGPU: 4, whole: 2},
		"eight whole GPUs":     {request: 64, perGPU: 8, whole: 8},
		"not a multiple":       {request: 6, perGPU: 4, wantErr: true},
		"zero":                 {request: 0, perGPU: 4, wantErr: true},
		"negative":             {request: -1, perGPU: 4, wantErr: true},
		"one slice per GPU":    {request: 3, perGPU: 1, whole: 3},
		"no slices per GPU":    {request: 1, perGPU: 0, wantErr: true},
		"the cap":              {request: MaxSliceRequest, perGPU: 64, whole: MaxSliceRequest / 64},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			whole, err := Shape(tc.request, tc.perGPU)
			if whole != tc.whole || (err != nil) != tc.wantErr {
				t.Errorf("Shape(%d, %d) = %d, %v; want %d, error %v", tc.request, tc.perGPU, whole, err, tc.whole, tc.wantErr)
			}
		})
	}
}

func TestRanksThatFit(t *testing.T) {
	full := func(free int) GPUFree { return GPUFree{Slices: 4, Free: free, Healthy: true} }
	tests := map[string]struct {
		request int
		gpus    []GPUFree
		want    int
	}{
		"no GPUs":                            {request: 1},
		"one slice per partly free GPU":      {request: 1, gpus: []GPUFree{full(1), full(0), full(4)}, want: 2},
		"two slices need two on one GPU":     {request: 2, gpus: []GPUFree{full(1), full(1), full(2), full(3)}, want: 2},
		"unhealthy GPU does not count":       {request: 1, gpus: []GPUFree{{Slices: 4, Free: 4}, full(1)}, want: 1},
		"whole GPU rank":                     {request: 4, gpus: []GPUFree{full(4), full(3), full(4)}, want: 2},
		"two-GPU ranks":                      {request: 8, gpus: []GPUFree{full(4), full(4), full(4), full(2)}, want: 1},
		"smaller GPU serves a slice request": {request: 2, gpus: []GPUFree{{Slices: 2, Free: 2, Healthy: true}}, want: 1},
		"smaller GPU is no whole GPU":        {request: 8, gpus: []GPUFree{full(4), {Slices: 2, Free: 2, Healthy: true}}, want: 0},
		"not a multiple":                     {request: 6, gpus: []GPUFree{full(4), full(4)}, want: 0},
		"zero request":                       {request: 0, gpus: []GPUFree{full(4)}, want: 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := RanksThatFit(tc.request, 4, tc.gpus); got != tc.want {
				t.Errorf("RanksThatFit(%d) = %d, want %d", tc.request, got, tc.want)
			}
		})
	}
}
