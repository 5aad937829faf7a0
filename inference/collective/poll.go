package collective

import (
	"io"
	"net"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pollingReader reads a TCP socket by polling it with non-blocking reads for
// up to spin before handing the wait to Go's network poller. The conn's
// deadlines still apply: RawConn.Read checks them before polling and while
// parked, and one spin is bounded by spin.
type pollingReader struct {
	conn net.Conn
	raw  syscall.RawConn
	spin time.Duration
}

func (r *pollingReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var (
		n    int
		rerr error
		spun bool
	)
	err := r.raw.Read(func(fd uintptr) bool {
		start := time.Now()
		for {
			n, rerr = unix.Read(int(fd), b)
			switch {
			case rerr == unix.EINTR:
				continue
			case rerr != unix.EAGAIN:
				return true
			case spun || time.Since(start) >= r.spin:
				// Park until readable; later wake-ups do not spin again.
				spun = true
				return false
			}
			// Let other goroutines of this rank (HTTP, heartbeats) run
			// even with GOMAXPROCS=1, and other processes on this core:
			// where ranks share cores the peer we wait for may need it.
			runtime.Gosched()
			yieldCPU()
		}
	})
	if err != nil {
		return 0, err
	}
	if rerr != nil {
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: r.conn.LocalAddr(), Addr: r.conn.RemoteAddr(), Err: rerr}
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}
