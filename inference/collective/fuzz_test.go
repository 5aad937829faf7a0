package collective

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// frame builds one wire frame.
func frame(typ byte, payload []byte) []byte {
	b := make([]byte, frameHeader, frameHeader+len(payload))
	binary.LittleEndian.PutUint32(b, uint32(len(payload)))
	b[4] = typ
	return append(b, payload...)
}

func helloFrame(t testing.TB, info PeerInfo) []byte {
	b, err := json.Marshal(info)
	if err != nil {
		t.Fatal(err)
	}
	return frame(frameHello, b)
}

// testLeader is a leader without a listener: handshake is driven over
// net.Pipe, so a fuzz iteration costs no socket.
func testLeader() *Leader {
	opts := Options{Self: PeerInfo{Rank: 0, WorldSize: 3, ModelHash: "abc"}, HelloTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	opts.defaults()
	return &Leader{opts: opts, peers: make([]*peer, 3), joined: 1, formed: make(chan struct{})}
}

// scriptConn is a net.Conn that reads a fixed script and records what is
// written: the handshake sees EOF where the script ends instead of waiting
// for its timeout, so a fuzz iteration takes microseconds.
type scriptConn struct {
	net.Conn
	r   *bytes.Reader
	out bytes.Buffer
}

func (c *scriptConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *scriptConn) Write(b []byte) (int, error)      { return c.out.Write(b) }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// handshakeBytes feeds raw bytes to the leader's handshake as one connection
// and returns what the leader answered.
func handshakeBytes(l *Leader, in []byte) []byte {
	c := &scriptConn{r: bytes.NewReader(in)}
	l.handshake(c)
	return c.out.Bytes()
}

// FuzzHandshake: whatever a peer sends first, the leader never panics, never
// admits a rank with the wrong model hash, world size or an out-of-range
// rank, and answers at most one small WELCOME frame.
func FuzzHandshake(f *testing.F) {
	f.Add(helloFrame(f, PeerInfo{Rank: 1, WorldSize: 3, ModelHash: "abc"}))
	f.Add(helloFrame(f, PeerInfo{Rank: 2, WorldSize: 3, ModelHash: "xyz"}))
	f.Add(helloFrame(f, PeerInfo{Rank: 7, WorldSize: 3, ModelHash: "abc"}))
	f.Add(frame(frameData, []byte{1, 2, 3, 4}))
	f.Add([]byte{0xff, 0xff, 0xff, 0x0f, frameHello})
	f.Add(frame(frameHello, []byte(`{"rank":1,"world_size":3,"model_hash":"abc","rank":2}`)))
	f.Fuzz(func(t *testing.T, in []byte) {
		l := testLeader()
		out := handshakeBytes(l, in)
		if len(out) > frameHeader+maxHandshakeFrame {
			t.Fatalf("leader answered %d bytes", len(out))
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		for r, p := range l.peers {
			if p == nil {
				continue
			}
			if r == 0 || p.info.Rank != r || p.info.ModelHash != "abc" || p.info.WorldSize != 3 {
				t.Fatalf("leader admitted %+v as rank %d", p.info, r)
			}
			if l.joined != 2 {
				t.Fatalf("joined = %d with one peer", l.joined)
			}
		}
	})
}

// FuzzReadFloats: a data frame of any shape either fills exactly the floats
// asked for or is an error; the receive buffer never grows past what the
// caller can hold.
func FuzzReadFloats(f *testing.F) {
	f.Add(frame(frameData, make([]byte, 16)), 4, true)
	f.Add(frame(frameData, make([]byte, 12)), 4, false)
	f.Add([]byte{0, 0, 0, 0x10, frameData}, 4, true)
	f.Add(frame(frameBcast, make([]byte, 16)), 4, true)
	f.Fuzz(func(t *testing.T, in []byte, n int, exact bool) {
		if n < 0 || n > 1<<12 {
			return
		}
		server, client := net.Pipe()
		defer server.Close()
		go func() {
			_, _ = client.Write(in)
			client.Close()
		}()
		p := newPeer(server, &Stats{}, 0)
		dst := make([]float32, n)
		want := -1
		if exact {
			want = n
		}
		got, err := p.readFloats(dst, want)
		if cap(p.buf) > 4*n {
			t.Fatalf("buffer grew to %d bytes for %d floats", cap(p.buf), n)
		}
		if err == nil && (got > n || exact && got != n) {
			t.Fatalf("read %d floats into %d (exact %t)", got, n, exact)
		}
	})
}

// TestFrameBounds: lengths are checked before anything is allocated.
func TestFrameBounds(t *testing.T) {
	tests := map[string]struct {
		in      []byte
		read    func(p *peer) error
		wantErr string
	}{
		"huge hello": {
			in:      []byte{0, 0, 0, 0x0c, frameHello}, // 192 MiB, under maxFrame
			read:    func(p *peer) error { _, err := p.readFrame(frameHello); return err },
			wantErr: "exceeds the limit of 65536",
		},
		"over maxFrame": {
			in:      []byte{0xff, 0xff, 0xff, 0xff, frameBcast},
			read:    func(p *peer) error { _, err := p.readFrame(frameBcast); return err },
			wantErr: "exceeds the limit",
		},
		"data larger than asked": {
			in:      frame(frameData, make([]byte, 4*1024)),
			read:    func(p *peer) error { _, err := p.readFloats(make([]float32, 8), 8); return err },
			wantErr: "exceeds the limit of 32",
		},
		"wrong type": {
			in:      frame(frameBcast, nil),
			read:    func(p *peer) error { _, err := p.readFrame(frameHello); return err },
			wantErr: "frame type 4, want 1",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			server, client := net.Pipe()
			defer server.Close()
			go func() {
				_, _ = client.Write(tc.in)
				client.Close()
			}()
			p := newPeer(server, &Stats{}, 0)
			err := tc.read(p)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
			}
			if cap(p.buf) > 1<<10 {
				t.Errorf("allocated %d bytes for a refused frame", cap(p.buf))
			}
		})
	}
}

// TestHandshakeAdmitsOnlyMatchingPeers drives the leader's handshake with
// raw frames, as a hostile or misconfigured peer would send them.
func TestHandshakeAdmitsOnlyMatchingPeers(t *testing.T) {
	tests := map[string]struct {
		in       []byte
		wantJoin bool
		wantMsg  string
	}{
		"good":        {helloFrame(t, PeerInfo{Rank: 1, WorldSize: 3, ModelHash: "abc"}), true, ""},
		"wrong hash":  {helloFrame(t, PeerInfo{Rank: 1, WorldSize: 3, ModelHash: "abd"}), false, "model hash mismatch"},
		"wrong rank":  {helloFrame(t, PeerInfo{Rank: 3, WorldSize: 3, ModelHash: "abc"}), false, "out of range"},
		"not json":    {frame(frameHello, []byte("hello")), false, "bad hello"},
		"huge length": {[]byte{0, 0, 0, 0x0c, frameHello}, false, "exceeds the limit"},
		"data first":  {frame(frameData, make([]byte, 8)), false, "protocol error"},
		"overflow":    {frame(frameHello, []byte(`{"rank":1e400}`)), false, "bad hello"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			l := testLeader()
			out := handshakeBytes(l, tc.in)
			var wel welcome
			if len(out) >= frameHeader {
				_ = json.Unmarshal(out[frameHeader:], &wel)
			}
			if got := l.Connected() == 2; got != tc.wantJoin {
				t.Errorf("joined = %t, want %t (answer %q)", got, tc.wantJoin, wel.Error)
			}
			if !strings.Contains(wel.Error, tc.wantMsg) {
				t.Errorf("answer %q, want one containing %q", wel.Error, tc.wantMsg)
			}
		})
	}
}
