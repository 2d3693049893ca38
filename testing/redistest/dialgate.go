package redistest

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
)

// DialGate lets a test decide when a client may connect: set as the client's
// Dialer, it fails every dial while shut, as dials to an unreachable Redis
// fail, so the client reconnects only once the test opens it again.
type DialGate struct {
	shut atomic.Bool
}

// Shut makes dials fail until Open.
func (g *DialGate) Shut() { g.shut.Store(true) }

// Open lets dials through again.
func (g *DialGate) Open() { g.shut.Store(false) }

// Dial is a go-redis Options.Dialer.
func (g *DialGate) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if g.shut.Load() {
		return nil, errors.New("redistest: dial refused: the test shut this client's dial gate")
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}
