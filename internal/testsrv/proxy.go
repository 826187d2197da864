package testsrv

import (
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Dir is a direction through a Proxy.
type Dir int

const (
	ToServer Dir = iota // what the client sends
	ToClient            // what the server answers
)

// Kind is what a Proxy does to the bytes once a Fault triggers.
type Kind int

const (
	Pass  Kind = iota // forward everything
	Stall             // forward nothing more, either way, on any connection (new ones too), until the fault is changed: a frozen server, a blackholed route
	Cut               // close every open connection with a reset, once; later connections pass
	Flip              // invert the one byte at the offset, once
	Slow              // pass Rate bytes a second In one direction, per connection, with small socket buffers, as a slow link does
)

// Fault is a misbehaviour: Kind, once After bytes have gone In one
// direction (counted over all connections since the fault was set).
type Fault struct {
	Kind  Kind
	In    Dir
	After int64
	Rate  int64 // Slow: bytes a second
}

// slowBuffer is a Slow link's socket buffers: a loopback connection's
// megabytes would take a whole upload at once and acknowledge it, which no
// slow link does.
const slowBuffer = 32 << 10

// Proxy is a TCP proxy on 127.0.0.1 in front of a real server, for tests
// of what a client does when the network or the server misbehaves.
type Proxy struct {
	Addr   string // 127.0.0.1:PORT
	target string
	ln     net.Listener

	mu      sync.Mutex
	fault   Fault
	seen    [2]int64      // bytes per direction since the fault was set
	fired   bool          // a one-shot fault (Cut, Flip) has happened
	changed chan struct{} // closed when the fault changes
	conns   map[net.Conn]bool
	closed  bool
	dialed  int
}

// StartProxy listens on a free loopback port and forwards to target
// (host:port).
func StartProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, changed: make(chan struct{}), conns: map[net.Conn]bool{}}
	go p.serve()
	return p, nil
}

// Set replaces the fault and restarts its byte count; a stall is lifted.
func (p *Proxy) Set(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault, p.seen, p.fired = f, [2]int64{}, false
	close(p.changed)
	p.changed = make(chan struct{})
	if f.Kind == Slow {
		for c := range p.conns {
			slowBuffers(c)
		}
	}
}

func slowBuffers(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetReadBuffer(slowBuffer)
		tc.SetWriteBuffer(slowBuffer)
	}
}

// Seen is how many bytes have gone in dir since the fault was set.
func (p *Proxy) Seen(dir Dir) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[dir]
}

// Connections is how many client connections the proxy has taken.
func (p *Proxy) Connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dialed
}

// Close stops listening and closes every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = map[net.Conn]bool{}
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	p.ln.Close()
	for c := range conns {
		c.Close()
	}
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, s) {
			return
		}
		var once sync.Once
		end := func() {
			once.Do(func() {
				c.Close()
				s.Close()
				p.mu.Lock()
				delete(p.conns, c)
				delete(p.conns, s)
				p.mu.Unlock()
			})
		}
		go func() { p.pump(s, c, ToServer); end() }()
		go func() { p.pump(c, s, ToClient); end() }()
	}
}

func (p *Proxy) track(c ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, x := range c {
			x.Close()
		}
		return false
	}
	for _, x := range c {
		p.conns[x] = true
		if p.fault.Kind == Slow {
			slowBuffers(x)
		}
	}
	p.dialed++
	return true
}

// pump copies src to dst, applying the fault to the bytes going in dir.
func (p *Proxy) pump(dst, src net.Conn, dir Dir) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for chunk := buf[:n]; len(chunk) > 0; {
			fwd, ok := p.admit(chunk, dir)
			if !ok {
				return
			}
			if _, werr := dst.Write(chunk[:fwd]); werr != nil {
				return
			}
			chunk = chunk[fwd:]
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
	}
}

// admit decides how much of chunk may go on now (it may alter the chunk,
// block while stalled, or cut every connection); ok false ends the pump.
func (p *Proxy) admit(chunk []byte, dir Dir) (int, bool) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return 0, false
		}
		f, seen := p.fault, p.seen[dir]
		n := int64(len(chunk))
		applies := f.Kind != Pass && !p.fired && f.In == dir
		stalled := f.Kind == Stall && p.seen[f.In] >= f.After
		if f.Kind == Slow && f.In == dir && f.Rate > 0 {
			n = min(n, max(f.Rate/20, 1))
			p.seen[dir] += n
			p.mu.Unlock()
			time.Sleep(time.Duration(n) * time.Second / time.Duration(f.Rate))
			return int(n), true
		}
		switch {
		case stalled:
			wait := p.changed
			p.mu.Unlock()
			<-wait
			continue
		case applies && seen+n > f.After && f.Kind == Stall:
			n = f.After - seen // up to the point, then stall
		case applies && seen+n > f.After && f.Kind == Flip:
			chunk[f.After-seen] ^= 0xff
			p.fired = true
		case applies && seen+n > f.After && f.Kind == Cut:
			if seen < f.After {
				n = f.After - seen // the bytes before the cut go first
				break
			}
			p.fired = true
			conns := p.conns
			p.conns = map[net.Conn]bool{}
			p.mu.Unlock()
			for c := range conns {
				if tc, ok := c.(*net.TCPConn); ok {
					tc.SetLinger(0)
				}
				c.Close()
			}
			return 0, false
		}
		p.seen[dir] += n
		p.mu.Unlock()
		return int(n), true
	}
}

func (f Fault) String() string {
	kind := [...]string{"pass", "stall", "cut", "flip", "slow"}[f.Kind]
	dir := [...]string{"to server", "to client"}[f.In]
	return fmt.Sprintf("%s after %d bytes %s", kind, f.After, dir)
}
