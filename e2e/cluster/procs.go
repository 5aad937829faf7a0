package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// proc is one process the harness started. StartTime (clock ticks since
// boot, from /proc/<pid>/stat) guards against killing an unrelated process
// that reused the PID after a crash or a reboot.
type proc struct {
	Name      string   `json:"name"`
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"`
	Args      []string `json:"args"`
	Log       string   `json:"log"`
}

// state is persisted in the cluster directory after every change so that
// Down can clean up after a run that crashed half-way through Up.
type state struct {
	Procs []proc `json:"procs"`
	// ContainerdSocket is set once containerd was started; Down uses it to
	// stop the containers containerd's shims run outside our process groups.
	ContainerdSocket string `json:"containerdSocket,omitempty"`
	// RegistryAddr is the cluster registry's host:port on loopback, once
	// it runs.
	RegistryAddr string `json:"registryAddr,omitempty"`
}

const stateFile = "state.json"

func loadState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return &state{}, nil
	}
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, stateFile), err)
	}
	return &st, nil
}

func (st *state) save(dir string) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, stateFile))
}

// procStartTime returns field 22 of /proc/<pid>/stat.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces; fields resume after ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return ""
	}
	return string(b[i+2])
}

// alive reports whether p still runs as the very process we started.
func (p proc) alive() bool {
	st, err := procStartTime(p.PID)
	if err != nil || st != p.StartTime {
		return false
	}
	return procState(p.PID) != "Z"
}

// startProc starts a process in its own session, so it outlives the
// command that started the cluster (make cluster-up) and can be stopped as a
// group, and records it in the state before returning.
func (c *Cluster) startProc(name, bin string, args []string, env []string) (proc, error) {
	logPath := filepath.Join(c.Dir, "logs", name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return proc{}, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return proc{}, fmt.Errorf("starting %s: %w", name, err)
	}
	// Reap it if it dies while we run, so alive() sees it gone rather than
	// a zombie; after we exit, init reaps it.
	go func() { _ = cmd.Wait() }()
	st, err := procStartTime(cmd.Process.Pid)
	if err != nil {
		return proc{}, fmt.Errorf("%s exited at once; see %s", name, logPath)
	}
	p := proc{Name: name, PID: cmd.Process.Pid, StartTime: st, Args: append([]string{bin}, args...), Log: logPath}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.Procs = append(c.state.Procs, p)
	if err := c.state.save(c.Dir); err != nil {
		return p, fmt.Errorf("saving state: %w", err)
	}
	return p, nil
}

// poll is the harness's wait for a condition: wait.PollUntilContextTimeout
// (cond at once, then every interval, until it is done or returns an error)
// with its error mapped to what the callers return: ctx's own error when
// the caller's ctx ended, timedOut() when timeout passed first, cond's
// error as it is.
func poll(ctx context.Context, interval, timeout time.Duration, cond func(ctx context.Context) (done bool, err error), timedOut func() error) error {
	err := wait.PollUntilContextTimeout(ctx, interval, timeout, true, cond)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case wait.Interrupted(err):
		return timedOut()
	default:
		return err
	}
}

// stopProc sends SIGTERM to the process group, then SIGKILL if it has not
// exited after grace, and waits (at most 5 s) for it to be gone.
func stopProc(p proc, grace time.Duration) {
	if !p.alive() {
		return
	}
	gone := func(context.Context) (bool, error) { return !p.alive(), nil }
	_ = syscall.Kill(-p.PID, syscall.SIGTERM)
	_ = syscall.Kill(p.PID, syscall.SIGTERM)
	if wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, grace, true, gone) == nil {
		return
	}
	_ = syscall.Kill(-p.PID, syscall.SIGKILL)
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	// Callers that need it gone check alive() themselves (Down reports it).
	_ = wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 5*time.Second, true, gone)
}

// tail returns the last n lines of a log file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
