package collective

import "golang.org/x/sys/unix"

// yieldCPU offers this core to other runnable processes.
func yieldCPU() { _, _, _ = unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0) }
