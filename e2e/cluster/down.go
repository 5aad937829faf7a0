package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Down stops every process recorded in dir's state, the containers the
// cluster's containerd ran, unmounts what the kubelet and containerd mounted
// under dir, and removes dir. It is safe to call on a half-started or
// crashed cluster and on a directory that does not exist.
func Down(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	st, err := loadState(dir)
	if err != nil {
		return err
	}
	byName := map[string][]proc{}
	for _, p := range st.Procs {
		byName[p.Name] = append(byName[p.Name], p)
	}
	stop := func(name string, grace time.Duration) {
		for _, p := range byName[name] {
			stopProc(p, grace)
		}
		delete(byName, name)
	}
	// Node side first, so nothing restarts containers while we stop them.
	stop("kwok", 5*time.Second)
	_, hadKubelet := byName["kubelet"]
	stop("kubelet", 10*time.Second)
	if st.ContainerdSocket != "" {
		stopContainers(st.ContainerdSocket)
	}
	stop("containerd", 10*time.Second)
	killLeftovers(dir, st.ContainerdSocket)
	removeContainerCgroups(dir)
	if st.ContainerdSocket != "" || st.RegistryAddr != "" {
		// The pod bridge is the one thing the cluster made outside dir
		// (made right after the registry started).
		_ = exec.Command("ip", "link", "delete", PodBridge).Run()
	}
	// Whatever else ran, in reverse start order.
	for i := len(st.Procs) - 1; i >= 0; i-- {
		if _, ok := byName[st.Procs[i].Name]; ok {
			stopProc(st.Procs[i], 10*time.Second)
		}
	}
	var errs []error
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	if hadKubelet {
		// The kubelet's device-manager files live at a fixed path; a stale
		// checkpoint would name pods of a cluster that no longer exists.
		for _, f := range []string{"kubelet.sock", "kubelet_internal_checkpoint"} {
			_ = os.Remove(filepath.Join("/var/lib/kubelet/device-plugins", f))
		}
	}
	for _, p := range st.Procs {
		if p.alive() {
			errs = append(errs, fmt.Errorf("%s (pid %d) is still running", p.Name, p.PID))
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// stopContainers asks containerd to kill and delete every task, so runc
// removes the containers' cgroups and mounts.
func stopContainers(socket string) {
	ctr := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", socket, "--namespace", "k8s.io"}, args...)...).Output()
		return string(out), err
	}
	if _, err := os.Stat(socket); err != nil {
		return
	}
	out, err := ctr("tasks", "ls", "-q")
	if err != nil {
		return
	}
	ids := strings.Fields(out)
	for _, id := range ids {
		_, _ = ctr("tasks", "kill", "--signal", "SIGKILL", id)
	}
	for _, id := range ids {
		// Deleting a task fails until it has exited from the kill above.
		_ = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 5*time.Second, true, func(context.Context) (bool, error) {
			_, err := ctr("tasks", "delete", id)
			return err == nil, nil
		})
	}
}

// killLeftovers kills processes that belong to this cluster but are not in
// our process groups: containers (their root is under dir) and containerd
// shims (their command line names our containerd socket). It kills again
// every 300 ms until a pass finds none of them left, for at most a second.
func killLeftovers(dir, socket string) {
	_ = wait.PollUntilContextTimeout(context.Background(), 300*time.Millisecond, time.Second, true, func(context.Context) (bool, error) {
		entries, _ := os.ReadDir("/proc")
		killed := 0
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			ours := false
			if root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); err == nil && strings.HasPrefix(root, dir+"/") {
				ours = true
			}
			if socket != "" {
				if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil &&
					strings.Contains(string(cmdline), socket) {
					ours = true
				}
			}
			if ours {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				killed++
			}
		}
		return killed == 0, nil
	})
}

// removeContainerCgroups removes the (empty, once their tasks are gone)
// cgroups of containers this cluster ran, named by the task IDs in its
// containerd state.
func removeContainerCgroups(dir string) {
	tasks, err := os.ReadDir(filepath.Join(dir, "containerd", "state", "io.containerd.runtime.v2.task", "k8s.io"))
	if err != nil {
		return
	}
	controllers, _ := os.ReadDir("/sys/fs/cgroup")
	for _, t := range tasks {
		for _, ctl := range controllers {
			_ = os.Remove(filepath.Join("/sys/fs/cgroup", ctl.Name(), "k8s.io", t.Name()))
		}
	}
}

// unmountUnder lazily unmounts every mount point below dir, deepest first.
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, mp := range points {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
