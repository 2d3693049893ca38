package redistest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy forwards TCP connections to a Redis and can lose the replies, as a
// network does when a connection dies after a command was sent: the command
// runs in Redis, and the client never learns its outcome.
type Proxy struct {
	// Addr is where clients connect instead of the server.
	Addr string

	target   string
	listener net.Listener
	// dropNext poisons the next connection that sends anything; dropAll
	// poisons every connection that sends anything while it is set.
	dropNext atomic.Bool
	dropAll  atomic.Bool
	// recording makes every connection keep the commands it forwards.
	recording atomic.Bool
	recorded  commandLog

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// StartProxy listens on a free loopback port and forwards to target until the
// test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: proxy listen: %v", err)
	}
	p := &Proxy{Addr: l.Addr().String(), target: target, listener: l}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// RecordCommands makes the connections opened from now on keep every
// command they forward, for Commands.
func (p *Proxy) RecordCommands() { p.recording.Store(true) }

// Commands returns the commands recorded so far, in the order each
// connection sent them.
func (p *Proxy) Commands() []Command { return p.recorded.all() }

// DropNextReply loses every reply on the connection that sends the next
// request, from that request on. The client times out and drops the
// connection; its other connections are untouched.
func (p *Proxy) DropNextReply() { p.dropNext.Store(true) }

// DropReplies loses the replies on every connection that sends a request
// while on is true.
func (p *Proxy) DropReplies(on bool) { p.dropAll.Store(on) }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.listener.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close() // nolint: errcheck
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, client, server)
		p.mu.Unlock()
		var poisoned atomic.Bool
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			var requests io.Writer = io.Discard
			if p.recording.Load() {
				pr, pw := io.Pipe()
				requests = pw
				go p.recorded.read(pr)
				defer pw.Close() // nolint: errcheck
			}
			p.forward(io.MultiWriter(requests, server), client, func() {
				if p.dropAll.Load() || p.dropNext.CompareAndSwap(true, false) {
					poisoned.Store(true)
				}
			})
			server.Close() // nolint: errcheck
		}()
		go func() {
			defer p.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := server.Read(buf)
				if n > 0 && !poisoned.Load() {
					if _, werr := client.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			client.Close() // nolint: errcheck
		}()
	}
}

// forward copies src to dst, calling onRequest before each chunk it writes.
func (p *Proxy) forward(dst io.Writer, src io.Reader, onRequest func()) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			onRequest()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) close() {
	p.listener.Close() // nolint: errcheck
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close() // nolint: errcheck
	}
	p.mu.Unlock()
	p.wg.Wait()
}
