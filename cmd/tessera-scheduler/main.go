// Command tessera-scheduler is kube-scheduler v1.37 with Tessera's plugin
// registered. Pods opt in with schedulerName: tessera-scheduler.
//
// With --config it runs exactly that KubeSchedulerConfiguration (see
// scheduler.DefaultConfig for the tessera-scheduler profile). Without
// --config it writes the default profile to a temporary file and uses it,
// taking --kubeconfig and --leader-elect from the command line.
package main

import (
	"fmt"
	"os"
	"strings"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-scheduler/app"

	"github.com/tessera-gpu/tessera/scheduler"
)

func main() {
	args, cleanup, err := withDefaultConfig(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "tessera-scheduler:", err)
		os.Exit(1)
	}
	cmd := app.NewSchedulerCommand(app.WithPlugin(scheduler.Name, scheduler.New))
	cmd.Use = "tessera-scheduler"
	cmd.SetArgs(args)
	code := cli.Run(cmd)
	cleanup()
	os.Exit(code)
}

// withDefaultConfig adds --config <default profile> unless the command line
// names a config (or asks for help or the version).
func withDefaultConfig(args []string) ([]string, func(), error) {
	noop := func() {}
	var kubeconfig string
	leaderElect := false
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			continue
		}
		switch name {
		case "config", "write-config-to", "help", "h", "version":
			return args, noop, nil
		case "kubeconfig":
			if !hasValue && i+1 < len(args) {
				value = args[i+1]
			}
			kubeconfig = value
		case "leader-elect":
			leaderElect = !hasValue || value == "true"
		}
	}
	f, err := os.CreateTemp("", "tessera-scheduler-config-*.yaml")
	if err != nil {
		return nil, noop, fmt.Errorf("writing the default configuration: %w", err)
	}
	cfg := scheduler.DefaultConfig(scheduler.ConfigOptions{Kubeconfig: kubeconfig, LeaderElect: leaderElect})
	if _, err := f.WriteString(cfg); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, noop, fmt.Errorf("writing the default configuration: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, noop, err
	}
	return append([]string{"--config", f.Name()}, args...), func() { os.Remove(f.Name()) }, nil
}
