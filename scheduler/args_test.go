package scheduler

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
)

func TestDecodeArgs(t *testing.T) {
	tests := map[string]struct {
		raw     string
		wantErr string
		check   func(*testing.T, *Args)
	}{
		"empty gives defaults": {raw: "", check: func(t *testing.T, a *Args) {
			if *a.ScheduleTimeoutSeconds != DefaultScheduleTimeoutSeconds || *a.BackoffSeconds != DefaultBackoffSeconds ||
				*a.DefaultPreferredTopology != DefaultPreferredTopology || *a.DefaultRequiredTopology != "" || !*a.PodGroupStatus {
				t.Errorf("defaults not applied: %+v", a)
			}
		}},
		"json": {raw: `{"backoffSeconds":3,"defaultRequiredTopology":"topology.kubernetes.io/rack"}`, check: func(t *testing.T, a *Args) {
			if *a.BackoffSeconds != 3 || *a.DefaultRequiredTopology != "topology.kubernetes.io/rack" {
				t.Errorf("got %+v", a)
			}
		}},
		"yaml":          {raw: "podGroupStatus: false\n", check: func(t *testing.T, a *Args) { _ = a }},
		"unknown field": {raw: `{"backofSeconds":3}`, wantErr: `unknown field "backofSeconds"`},
		"wrong type":    {raw: `{"backoffSeconds":"soon"}`, wantErr: "backoffSeconds"},
		"out of range":  {raw: `{"scheduleTimeoutSeconds":0}`, wantErr: "scheduleTimeoutSeconds: 0 is outside 1..86400"},
		"bad label key": {raw: `{"defaultPreferredTopology":"a b"}`, wantErr: "defaultPreferredTopology"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a, err := DecodeArgs(&runtime.Unknown{Raw: []byte(tc.raw), ContentType: runtime.ContentTypeJSON})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, a)
		})
	}
	if _, err := DecodeArgs(nil); err != nil {
		t.Errorf("nil args: %v", err)
	}
	b := int64(5)
	a, err := DecodeArgs(&Args{BackoffSeconds: &b})
	if err != nil || *a.BackoffSeconds != 5 {
		t.Errorf("typed args: %v %+v", err, a)
	}
}

func TestDefaultConfigHasProfile(t *testing.T) {
	cfg := DefaultConfig(ConfigOptions{Kubeconfig: "/k", ArgsYAML: "backoffSeconds: 2\n"})
	for _, want := range []string{"schedulerName: tessera-scheduler", "- name: Tessera", "- name: PrioritySort", "- name: GangScheduling", "backoffSeconds: 2", `kubeconfig: "/k"`,
		"    bind:\n      enabled:\n      - name: Tessera\n"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
}
