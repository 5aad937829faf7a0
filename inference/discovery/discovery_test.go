package discovery

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestResolve(t *testing.T) {
	unset := Input{Rank: -1, WorldSize: -1, CollectivePort: 29500}
	with := func(mod func(*Input), env map[string]string) Input {
		in := unset
		if mod != nil {
			mod(&in)
		}
		in.Getenv = func(k string) string { return env[k] }
		return in
	}
	allEnv := map[string]string{
		"TESSERA_RANK": "1", "TESSERA_WORLD_SIZE": "2", "TESSERA_LEADER_ADDR": "10.0.0.1:7000",
		"LWS_WORKER_INDEX": "3", "LWS_GROUP_SIZE": "4", "LWS_LEADER_ADDRESS": "lws-0.lws",
		"HOSTNAME": "shard-2", "POD_INDEX": "2",
	}
	tests := map[string]struct {
		in      Input
		want    Result
		wantErr string
	}{
		"nothing set runs alone": {
			in:   with(nil, nil),
			want: Result{Rank: 0, WorldSize: 1, Source: "default"},
		},
		"flags beat env": {
			in:   with(func(i *Input) { i.Rank, i.WorldSize, i.LeaderAddr = 1, 4, "127.0.0.1:9000" }, allEnv),
			want: Result{Rank: 1, WorldSize: 4, LeaderAddr: "127.0.0.1:9000", Source: "flags"},
		},
		"tessera env beats lws": {
			in:   with(nil, allEnv),
			want: Result{Rank: 1, WorldSize: 2, LeaderAddr: "10.0.0.1:7000", Source: "tessera env"},
		},
		"lws gets port appended": {
			in:   with(nil, map[string]string{"LWS_WORKER_INDEX": "3", "LWS_GROUP_SIZE": "4", "LWS_LEADER_ADDRESS": "lws-0.lws"}),
			want: Result{Rank: 3, WorldSize: 4, LeaderAddr: "lws-0.lws:29500", Source: "lws env"},
		},
		"statefulset from hostname": {
			in:   with(func(i *Input) { i.HeadlessService, i.WorldSize = "shard", 4 }, map[string]string{"HOSTNAME": "llm-3"}),
			want: Result{Rank: 3, WorldSize: 4, LeaderAddr: "llm-0.shard:29500", Source: "statefulset"},
		},
		"statefulset pod index and env world": {
			in:   with(func(i *Input) { i.HeadlessService = "svc" }, map[string]string{"HOSTNAME": "my-set-1", "POD_INDEX": "1", "TESSERA_WORLD_SIZE": "2"}),
			want: Result{Rank: 1, WorldSize: 2, LeaderAddr: "my-set-0.svc:29500", Source: "statefulset"},
		},
		"leader rank needs no address": {
			in:   with(func(i *Input) { i.Rank, i.WorldSize = 0, 2 }, nil),
			want: Result{Rank: 0, WorldSize: 2, Source: "flags"},
		},
		"rank without world": {
			in:      with(func(i *Input) { i.Rank = 0 }, nil),
			wantErr: "--rank given without --world-size",
		},
		"rank out of range": {
			in:      with(func(i *Input) { i.Rank, i.WorldSize, i.LeaderAddr = 2, 2, "x:1" }, nil),
			wantErr: "rank 2 out of range for world size 2",
		},
		"worker without leader": {
			in:      with(func(i *Input) { i.Rank, i.WorldSize = 1, 2 }, nil),
			wantErr: "rank 1 needs a leader address",
		},
		"bad tessera rank": {
			in:      with(nil, map[string]string{"TESSERA_RANK": "one", "TESSERA_WORLD_SIZE": "2"}),
			wantErr: `TESSERA_RANK="one" is not an integer`,
		},
		"tessera rank without world": {
			in:      with(nil, map[string]string{"TESSERA_RANK": "1"}),
			wantErr: "TESSERA_RANK is set but TESSERA_WORLD_SIZE is not",
		},
		"statefulset without ordinal": {
			in:      with(func(i *Input) { i.HeadlessService, i.WorldSize = "svc", 2 }, map[string]string{"HOSTNAME": "box"}),
			wantErr: "has no ordinal suffix",
		},
		"world size without rank": {
			in:      with(func(i *Input) { i.WorldSize = 2 }, nil),
			wantErr: "--world-size 2 given but no rank",
		},
		"leader without port or collective port": {
			in:      with(func(i *Input) { i.Rank, i.WorldSize, i.LeaderAddr, i.CollectivePort = 1, 2, "leader", 0 }, nil),
			wantErr: "has no port",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Resolve(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Resolve error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Resolve (-want +got):\n%s", diff)
			}
		})
	}
}
