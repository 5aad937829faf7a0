// Package discovery works out a rank's place in its gang. Sources are tried
// in a fixed order and the first one that names a rank wins, so an explicit
// flag always beats whatever the orchestrator injected:
//
//  1. flags (--rank, --world-size, --leader-addr)
//  2. TESSERA_RANK, TESSERA_WORLD_SIZE, TESSERA_LEADER_ADDR (set by Tessera)
//  3. LWS_WORKER_INDEX, LWS_GROUP_SIZE, LWS_LEADER_ADDRESS (LeaderWorkerSet)
//  4. a StatefulSet pod index (POD_INDEX, or the ordinal suffix of HOSTNAME)
//     plus a headless service name; rank 0 is pod <set>-0.<service>
//
// With none of them the process runs alone as rank 0 of 1.
package discovery

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Input is what the caller collected; negative ints and empty strings mean
// "not set".
type Input struct {
	Rank, WorldSize int
	LeaderAddr      string
	// HeadlessService enables StatefulSet discovery.
	HeadlessService string
	// CollectivePort completes leader addresses that carry no port
	// (LeaderWorkerSet and StatefulSet give only a host name).
	CollectivePort int
	// Getenv reads the environment; tests pass a map lookup.
	Getenv func(string) string
}

// Result is a resolved place in the group.
type Result struct {
	Rank, WorldSize int
	// LeaderAddr is host:port of rank 0's collective listener; empty for a
	// world of one.
	LeaderAddr string
	// Source names the winning source, for logs.
	Source string
}

// Resolve applies the sources in order.
func Resolve(in Input) (Result, error) {
	env := in.Getenv
	if env == nil {
		env = func(string) string { return "" }
	}
	var (
		res Result
		err error
	)
	switch {
	case in.Rank >= 0:
		res = Result{Rank: in.Rank, WorldSize: in.WorldSize, LeaderAddr: in.LeaderAddr, Source: "flags"}
		if in.WorldSize < 0 {
			return Result{}, fmt.Errorf("flags: --rank given without --world-size")
		}
	case env("TESSERA_RANK") != "":
		res, err = fromEnv("TESSERA", env("TESSERA_RANK"), env("TESSERA_WORLD_SIZE"), env("TESSERA_LEADER_ADDR"))
	case env("LWS_WORKER_INDEX") != "":
		res, err = fromEnv("LWS", env("LWS_WORKER_INDEX"), env("LWS_GROUP_SIZE"), env("LWS_LEADER_ADDRESS"))
	case in.HeadlessService != "":
		res, err = fromStatefulSet(in, env)
	default:
		res = Result{Rank: 0, WorldSize: 1, Source: "default"}
		if in.WorldSize > 1 {
			return Result{}, fmt.Errorf("--world-size %d given but no rank: set --rank, TESSERA_RANK, LWS_WORKER_INDEX or a headless service", in.WorldSize)
		}
	}
	if err != nil {
		return Result{}, err
	}
	return finish(res, in.CollectivePort)
}

func fromEnv(prefix, rank, world, leader string) (Result, error) {
	names := map[string][3]string{
		"TESSERA": {"TESSERA_RANK", "TESSERA_WORLD_SIZE", "TESSERA_LEADER_ADDR"},
		"LWS":     {"LWS_WORKER_INDEX", "LWS_GROUP_SIZE", "LWS_LEADER_ADDRESS"},
	}[prefix]
	r, err := strconv.Atoi(rank)
	if err != nil {
		return Result{}, fmt.Errorf("%s=%q is not an integer", names[0], rank)
	}
	if world == "" {
		return Result{}, fmt.Errorf("%s is set but %s is not", names[0], names[1])
	}
	w, err := strconv.Atoi(world)
	if err != nil {
		return Result{}, fmt.Errorf("%s=%q is not an integer", names[1], world)
	}
	return Result{Rank: r, WorldSize: w, LeaderAddr: leader, Source: strings.ToLower(prefix) + " env"}, nil
}

func fromStatefulSet(in Input, env func(string) string) (Result, error) {
	host := env("HOSTNAME")
	set, ordinal, ok := splitOrdinal(host)
	idx := env("POD_INDEX")
	if idx == "" {
		if !ok {
			return Result{}, fmt.Errorf("statefulset discovery: POD_INDEX unset and HOSTNAME %q has no ordinal suffix", host)
		}
		idx = ordinal
	}
	r, err := strconv.Atoi(idx)
	if err != nil {
		return Result{}, fmt.Errorf("statefulset discovery: pod index %q is not an integer", idx)
	}
	if !ok {
		return Result{}, fmt.Errorf("statefulset discovery: cannot derive the set name from HOSTNAME %q", host)
	}
	w := in.WorldSize
	if w < 0 {
		if s := env("TESSERA_WORLD_SIZE"); s != "" {
			if w, err = strconv.Atoi(s); err != nil {
				return Result{}, fmt.Errorf("TESSERA_WORLD_SIZE=%q is not an integer", s)
			}
		}
	}
	if w < 0 {
		return Result{}, fmt.Errorf("statefulset discovery needs --world-size or TESSERA_WORLD_SIZE")
	}
	return Result{Rank: r, WorldSize: w, LeaderAddr: set + "-0." + in.HeadlessService, Source: "statefulset"}, nil
}

// splitOrdinal splits "web-3" into ("web", "3").
func splitOrdinal(host string) (string, string, bool) {
	i := strings.LastIndexByte(host, '-')
	if i <= 0 || i == len(host)-1 {
		return "", "", false
	}
	if _, err := strconv.Atoi(host[i+1:]); err != nil {
		return "", "", false
	}
	return host[:i], host[i+1:], true
}

func finish(r Result, port int) (Result, error) {
	if r.WorldSize < 1 {
		return Result{}, fmt.Errorf("%s: world size must be >= 1, got %d", r.Source, r.WorldSize)
	}
	if r.Rank < 0 || r.Rank >= r.WorldSize {
		return Result{}, fmt.Errorf("%s: rank %d out of range for world size %d", r.Source, r.Rank, r.WorldSize)
	}
	if r.WorldSize == 1 {
		r.LeaderAddr = ""
		return r, nil
	}
	if r.LeaderAddr == "" {
		if r.Rank != 0 {
			return Result{}, fmt.Errorf("%s: rank %d needs a leader address", r.Source, r.Rank)
		}
		return r, nil
	}
	if _, _, err := net.SplitHostPort(r.LeaderAddr); err != nil {
		if port <= 0 {
			return Result{}, fmt.Errorf("%s: leader address %q has no port and no --collective-port is set", r.Source, r.LeaderAddr)
		}
		r.LeaderAddr = net.JoinHostPort(r.LeaderAddr, strconv.Itoa(port))
	}
	return r, nil
}
