package collective

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"time"
)

// Frames are [u32 payload length][u8 type][payload], little endian.
const (
	frameHello   byte = 1
	frameWelcome byte = 2
	frameData    byte = 3
	frameBcast   byte = 4

	frameHeader = 5
	// maxFrame bounds allocations driven by a peer's length field.
	maxFrame = 256 << 20
	// maxHandshakeFrame bounds HELLO and WELCOME: they are a few hundred
	// bytes of JSON, and an unauthenticated peer must not make the leader
	// allocate maxFrame before its hello has even been checked.
	maxHandshakeFrame = 64 << 10
)

// PeerInfo is what a rank tells the leader about itself at HELLO.
type PeerInfo struct {
	Rank      int    `json:"rank"`
	WorldSize int    `json:"world_size"`
	ModelHash string `json:"model_hash"`
	// Devices and Slices are the GPUs the device plugin gave the rank.
	Devices []string `json:"devices,omitempty"`
	Slices  []string `json:"slices,omitempty"`
	Addr    string   `json:"addr,omitempty"`
}

type welcome struct {
	Error string `json:"error,omitempty"`
	// Retry marks a refusal that another attempt at the same address may
	// not meet: this leader is going away and a successor may take its
	// address (a pod replaced in place, hostNetwork ports).
	Retry bool `json:"retry,omitempty"`
}

// Options configure a TCP rank.
type Options struct {
	Self PeerInfo
	// OpTimeout bounds every collective call so a hung rank surfaces as an
	// error instead of a stuck request; zero disables it.
	OpTimeout time.Duration
	// HelloTimeout bounds the handshake on a fresh connection.
	HelloTimeout time.Duration
	Logger       *slog.Logger
	// OnAllReduce observes all-reduce latency (see Stats.OnAllReduce).
	OnAllReduce func(time.Duration)
	// BusyPoll is how long a read keeps polling the socket before parking
	// the goroutine. Ranks wait for each other at every all-reduce, and
	// waking a parked process costs more than the wait itself on many
	// machines; polling for a bounded time keeps the rank on its core.
	// Zero parks at once (the right choice when ranks share cores).
	BusyPoll time.Duration
}

// DefaultBusyPoll covers the usual wait at an all-reduce between ranks that
// have cores of their own (tens of microseconds), at the price of at most
// this much extra CPU per collective when the peer is slow.
const DefaultBusyPoll = 200 * time.Microsecond

func (o *Options) defaults() {
	if o.HelloTimeout == 0 {
		o.HelloTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// peer is one framed TCP connection.
type peer struct {
	info  PeerInfo
	conn  net.Conn
	r     *bufio.Reader
	w     *bufio.Writer
	buf   []byte
	stats *Stats
}

func newPeer(conn net.Conn, stats *Stats, busyPoll time.Duration) *peer {
	var src io.Reader = conn
	if tc, ok := conn.(*net.TCPConn); ok {
		// Collectives are small and latency-bound: never wait for Nagle.
		_ = tc.SetNoDelay(true)
		if raw, err := tc.SyscallConn(); err == nil && busyPoll > 0 {
			src = &pollingReader{conn: conn, raw: raw, spin: busyPoll}
		}
	}
	return &peer{conn: conn, r: bufio.NewReaderSize(src, 64<<10), w: bufio.NewWriterSize(conn, 64<<10), stats: stats}
}

func (p *peer) writeFrame(typ byte, payload []byte) error {
	var h [frameHeader]byte
	binary.LittleEndian.PutUint32(h[:], uint32(len(payload)))
	h[4] = typ
	if _, err := p.w.Write(h[:]); err != nil {
		return err
	}
	if _, err := p.w.Write(payload); err != nil {
		return err
	}
	p.stats.BytesSent.Add(int64(frameHeader + len(payload)))
	return nil
}

func (p *peer) writeFloats(v []float32) error {
	b := p.scratch(len(v) * 4)
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[i*4:], math.Float32bits(f))
	}
	return p.writeFrame(frameData, b)
}

// readFrame reads one frame of type typ and returns its payload, valid until
// the next read.
func (p *peer) readFrame(typ byte) ([]byte, error) {
	limit := uint32(maxFrame)
	if typ == frameHello || typ == frameWelcome {
		limit = maxHandshakeFrame
	}
	return p.readFrameLimit(typ, limit)
}

// readFrameLimit is readFrame with a payload bound, checked before anything
// is allocated: the length field is the peer's word, not ours.
func (p *peer) readFrameLimit(typ byte, limit uint32) ([]byte, error) {
	var h [frameHeader]byte
	if _, err := io.ReadFull(p.r, h[:]); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(h[:])
	if h[4] != typ {
		return nil, fmt.Errorf("protocol error: frame type %d, want %d", h[4], typ)
	}
	if n > limit {
		return nil, fmt.Errorf("protocol error: frame of %d bytes exceeds the limit of %d", n, limit)
	}
	b := p.scratch(int(n))
	if _, err := io.ReadFull(p.r, b); err != nil {
		return nil, err
	}
	p.stats.BytesReceived.Add(int64(frameHeader + n))
	return b, nil
}

// readFloats reads a data frame into dst, which must match its length
// exactly; a variable-length reader passes want < 0 and gets the count.
func (p *peer) readFloats(dst []float32, want int) (int, error) {
	// The frame can never be larger than dst; refusing it before reading
	// keeps a confused or hostile peer from growing our buffer.
	limit := uint64(len(dst)) * 4
	if want >= 0 {
		limit = min(limit, uint64(want)*4)
	}
	b, err := p.readFrameLimit(frameData, uint32(min(limit, maxFrame)))
	if err != nil {
		return 0, err
	}
	n := len(b) / 4
	if len(b)%4 != 0 || (want >= 0 && n != want) || n > len(dst) {
		return 0, fmt.Errorf("protocol error: data frame of %d bytes, expected %d floats", len(b), want)
	}
	for i := 0; i < n; i++ {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[i*4:]))
	}
	return n, nil
}

func (p *peer) scratch(n int) []byte {
	if cap(p.buf) < n {
		p.buf = make([]byte, n)
	}
	return p.buf[:n]
}

func (p *peer) deadline(d time.Duration) {
	if d > 0 {
		_ = p.conn.SetDeadline(time.Now().Add(d))
	} else {
		_ = p.conn.SetDeadline(time.Time{})
	}
}

// Leader is rank 0 of a TCP group: the hub of a star. Workers send it their
// partial sums, it adds them in rank order and sends back the one result.
type Leader struct {
	opts  Options
	ln    net.Listener
	stats Stats

	mu     sync.Mutex
	peers  []*peer // by rank; nil until joined
	joined int
	// welcomed counts workers whose WELCOME was written (see handshake).
	welcomed int
	formed   chan struct{}
	closed   bool

	tmp []float32
	sum []float32
}

// Listen starts rank 0's listener and accepts workers in the background
// until all World-1 of them have said HELLO.
func Listen(addr string, opts Options) (*Leader, error) {
	opts.defaults()
	if opts.Self.Rank != 0 {
		return nil, fmt.Errorf("leader must be rank 0, got %d", opts.Self.Rank)
	}
	if opts.Self.WorldSize < 1 {
		return nil, fmt.Errorf("world size must be >= 1, got %d", opts.Self.WorldSize)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("collective listen on %s: %w", addr, err)
	}
	l := &Leader{opts: opts, ln: ln, peers: make([]*peer, opts.Self.WorldSize), joined: 1, formed: make(chan struct{})}
	l.stats.OnAllReduce = opts.OnAllReduce
	if opts.Self.WorldSize == 1 {
		close(l.formed)
	}
	go l.acceptLoop()
	return l, nil
}

// Addr is the listener's address (useful with port 0).
func (l *Leader) Addr() net.Addr { return l.ln.Addr() }

// Connected counts joined ranks, the leader included.
func (l *Leader) Connected() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.joined
}

// Peers returns what each joined rank reported, indexed by rank.
func (l *Leader) Peers() []PeerInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]PeerInfo, len(l.peers))
	out[0] = l.opts.Self
	for r, p := range l.peers {
		if p != nil {
			out[r] = p.info
		}
	}
	return out
}

// Wait blocks until every rank has joined.
func (l *Leader) Wait(ctx context.Context) error {
	select {
	case <-l.formed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for ranks (%d/%d joined): %w", l.Connected(), l.opts.Self.WorldSize, ctx.Err())
	}
}

func (l *Leader) acceptLoop() {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				l.opts.Logger.Error("collective accept failed", "err", err)
			}
			return
		}
		go l.handshake(conn)
	}
}

func (l *Leader) handshake(conn net.Conn) {
	p := newPeer(conn, &l.stats, l.opts.BusyPoll)
	p.deadline(l.opts.HelloTimeout)
	rejectWith := func(w welcome) {
		l.opts.Logger.Warn("rejecting rank", "remote", conn.RemoteAddr().String(), "reason", w.Error)
		if b, err := json.Marshal(w); err == nil && p.writeFrame(frameWelcome, b) == nil {
			_ = p.w.Flush()
		}
		conn.Close()
	}
	reject := func(msg string) { rejectWith(welcome{Error: msg}) }
	b, err := p.readFrame(frameHello)
	if err != nil {
		reject(fmt.Sprintf("bad hello: %v", err))
		return
	}
	var info PeerInfo
	if err := json.Unmarshal(b, &info); err != nil {
		reject(fmt.Sprintf("bad hello: %v", err))
		return
	}
	self := l.opts.Self
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		rejectWith(welcome{Error: "leader shutting down", Retry: true})
		return
	case info.WorldSize != self.WorldSize:
		l.mu.Unlock()
		reject(fmt.Sprintf("world size mismatch: rank says %d, leader has %d", info.WorldSize, self.WorldSize))
		return
	case info.Rank < 1 || info.Rank >= self.WorldSize:
		l.mu.Unlock()
		reject(fmt.Sprintf("rank %d out of range 1..%d", info.Rank, self.WorldSize-1))
		return
	case info.ModelHash != self.ModelHash:
		l.mu.Unlock()
		reject(fmt.Sprintf("model hash mismatch: rank %d has %.12s, leader has %.12s", info.Rank, info.ModelHash, self.ModelHash))
		return
	case l.peers[info.Rank] != nil:
		l.mu.Unlock()
		reject(fmt.Sprintf("rank %d already joined", info.Rank))
		return
	}
	info.Addr = conn.RemoteAddr().String()
	p.info = info
	l.peers[info.Rank] = p
	l.joined++
	l.mu.Unlock()

	if b, err = json.Marshal(welcome{}); err == nil {
		err = p.writeFrame(frameWelcome, b)
	}
	if err == nil {
		err = p.w.Flush()
	}
	p.deadline(0)
	// The group is formed only once every rank's WELCOME is on the wire:
	// forming it when the last rank merely joined let a collective write to
	// a peer whose WELCOME another handshake was still writing (a race on
	// its buffered writer: "short write", a corrupted stream).
	l.mu.Lock()
	l.welcomed++
	done := l.welcomed == self.WorldSize-1
	l.mu.Unlock()
	if err != nil {
		// The group cannot form without this rank; let Wait time out or the
		// first collective fail rather than guess.
		l.opts.Logger.Error("welcome failed", "rank", info.Rank, "err", err)
	}
	l.opts.Logger.Info("rank joined", "rank", info.Rank, "remote", info.Addr)
	if done {
		// A formed group takes no one else, so the listener goes now: a
		// rank dialing this address later (a replacement group whose pods
		// reuse it while this one drains, a restarted worker) retries on
		// "connection refused" until a leader that wants it listens there,
		// instead of being refused for good by a group it can never join.
		// It also frees the address for that successor at once.
		if err := l.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			l.opts.Logger.Warn("closing the collective listener", "err", err)
		}
		close(l.formed)
	}
}

func (l *Leader) Rank() int      { return 0 }
func (l *Leader) WorldSize() int { return l.opts.Self.WorldSize }
func (l *Leader) Stats() *Stats  { return &l.stats }

// workers returns the joined workers, or an error before the group formed.
func (l *Leader) workers() ([]*peer, error) {
	select {
	case <-l.formed:
	default:
		return nil, fmt.Errorf("%w: only %d/%d ranks joined", ErrGroupBroken, l.Connected(), l.opts.Self.WorldSize)
	}
	return l.peers[1:], nil
}

// lost tears the whole group down: the other workers are mid-protocol and
// would otherwise sit in a read until their timeout.
func (l *Leader) lost(p *peer, err error) error {
	_ = l.Close()
	return fmt.Errorf("%w: rank %d: %w", ErrGroupBroken, p.info.Rank, err)
}

func (l *Leader) AllReduceSum(buf []float32) error {
	start := time.Now()
	ws, err := l.workers()
	if err != nil {
		return err
	}
	n := len(buf)
	if cap(l.sum) < n {
		l.sum = make([]float32, n)
		l.tmp = make([]float32, n)
	}
	sum, tmp := l.sum[:n], l.tmp[:n]
	copy(sum, buf)
	for _, p := range ws {
		p.deadline(l.opts.OpTimeout)
		if _, err := p.readFloats(tmp, n); err != nil {
			return l.lost(p, err)
		}
		for i, v := range tmp {
			sum[i] += v
		}
	}
	copy(buf, sum)
	for _, p := range ws {
		if err := p.writeFloats(buf); err != nil {
			return l.lost(p, err)
		}
		if err := p.w.Flush(); err != nil {
			return l.lost(p, err)
		}
	}
	l.stats.observeAllReduce(start)
	return nil
}

func (l *Leader) Gather(local, out []float32) error {
	ws, err := l.workers()
	if err != nil {
		return err
	}
	if len(local) > len(out) {
		return fmt.Errorf("gather: %d local values exceed output of %d", len(local), len(out))
	}
	off := copy(out, local)
	for _, p := range ws {
		p.deadline(l.opts.OpTimeout)
		n, err := p.readFloats(out[off:], -1)
		if err != nil {
			return l.lost(p, err)
		}
		off += n
	}
	if off != len(out) {
		return fmt.Errorf("%w: gathered %d values, want %d", ErrGroupBroken, off, len(out))
	}
	return nil
}

func (l *Leader) Broadcast(buf []byte) error {
	ws, err := l.workers()
	if err != nil {
		return err
	}
	for _, p := range ws {
		p.deadline(l.opts.OpTimeout)
		if err := p.writeFrame(frameBcast, buf); err != nil {
			return l.lost(p, err)
		}
		if err := p.w.Flush(); err != nil {
			return l.lost(p, err)
		}
	}
	return nil
}

func (l *Leader) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	err := l.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil // closed when the group formed
	}
	for _, p := range l.peers {
		if p != nil {
			p.conn.Close()
		}
	}
	return err
}

// Worker is a rank > 0 of a TCP group.
type Worker struct {
	opts  Options
	p     *peer
	stats Stats
}

// ErrRejected wraps a leader's refusal at HELLO that retrying cannot help
// (world size, rank or model mismatch). A leader that is shutting down
// refuses with Retry set instead, and Dial keeps trying.
var ErrRejected = errors.New("rejected by leader")

// Backoff is the retry schedule for reaching the leader.
type Backoff struct {
	Initial, Max time.Duration
}

// Dial connects to the leader at addr, retrying with exponential backoff
// until ctx ends, since workers routinely start before the leader listens.
func Dial(ctx context.Context, addr string, opts Options, b Backoff) (*Worker, error) {
	opts.defaults()
	if opts.Self.Rank < 1 || opts.Self.Rank >= opts.Self.WorldSize {
		return nil, fmt.Errorf("worker rank %d out of range 1..%d", opts.Self.Rank, opts.Self.WorldSize-1)
	}
	if b.Initial <= 0 {
		b.Initial = 100 * time.Millisecond
	}
	if b.Max < b.Initial {
		b.Max = 5 * time.Second
	}
	delay := b.Initial
	for attempt := 1; ; attempt++ {
		w, err := dialOnce(ctx, addr, opts)
		if err == nil {
			return w, nil
		}
		if errors.Is(err, ErrRejected) {
			return nil, err
		}
		opts.Logger.Info("leader not reachable yet", "addr", addr, "attempt", attempt, "retry_in", delay, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("joining leader %s after %d attempts: %w (last error: %v)", addr, attempt, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(delay*2, b.Max)
	}
}

func dialOnce(ctx context.Context, addr string, opts Options) (*Worker, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, opts.HelloTimeout)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	w := &Worker{opts: opts}
	w.stats.OnAllReduce = opts.OnAllReduce
	w.p = newPeer(conn, &w.stats, opts.BusyPoll)
	w.p.info = PeerInfo{Rank: 0}
	w.p.deadline(opts.HelloTimeout)
	b, err := json.Marshal(opts.Self)
	if err == nil {
		err = w.p.writeFrame(frameHello, b)
	}
	if err == nil {
		err = w.p.w.Flush()
	}
	if err == nil {
		b, err = w.p.readFrame(frameWelcome)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("hello: %w", err)
	}
	var wel welcome
	if err := json.Unmarshal(b, &wel); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hello: %w", err)
	}
	if wel.Error != "" {
		conn.Close()
		if wel.Retry {
			return nil, fmt.Errorf("leader refused for now: %s", wel.Error)
		}
		return nil, fmt.Errorf("%w: %s", ErrRejected, wel.Error)
	}
	w.p.deadline(0)
	return w, nil
}

func (w *Worker) Rank() int      { return w.opts.Self.Rank }
func (w *Worker) WorldSize() int { return w.opts.Self.WorldSize }
func (w *Worker) Stats() *Stats  { return &w.stats }

func (w *Worker) lost(err error) error {
	_ = w.Close()
	return fmt.Errorf("%w: leader: %v", ErrGroupBroken, err)
}

func (w *Worker) AllReduceSum(buf []float32) error {
	start := time.Now()
	w.p.deadline(w.opts.OpTimeout)
	if err := w.p.writeFloats(buf); err != nil {
		return w.lost(err)
	}
	if err := w.p.w.Flush(); err != nil {
		return w.lost(err)
	}
	if _, err := w.p.readFloats(buf, len(buf)); err != nil {
		return w.lost(err)
	}
	w.stats.observeAllReduce(start)
	return nil
}

func (w *Worker) Gather(local, _ []float32) error {
	w.p.deadline(w.opts.OpTimeout)
	if err := w.p.writeFloats(local); err != nil {
		return w.lost(err)
	}
	if err := w.p.w.Flush(); err != nil {
		return w.lost(err)
	}
	return nil
}

// Broadcast waits without a deadline: a worker idles here between requests
// for as long as the leader likes (the leader's heartbeats keep it honest).
func (w *Worker) Broadcast(buf []byte) error {
	w.p.deadline(0)
	b, err := w.p.readFrame(frameBcast)
	if err != nil {
		return w.lost(err)
	}
	if len(b) != len(buf) {
		return w.lost(fmt.Errorf("broadcast of %d bytes, expected %d", len(b), len(buf)))
	}
	copy(buf, b)
	return nil
}

func (w *Worker) Close() error { return w.p.conn.Close() }
