package testsrv

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// echo serves a listener that sends back what it reads.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func TestProxyFaults(t *testing.T) {
	p, err := StartProxy(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	roundtrip := func(msg []byte) ([]byte, error) {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		got := make([]byte, len(msg))
		n, err := io.ReadFull(c, got)
		return got[:n], err
	}
	msg := []byte("0123456789")
	if got, err := roundtrip(msg); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("pass: %q %v", got, err)
	}
	p.Set(Fault{Kind: Flip, In: ToClient, After: 3})
	if got, _ := roundtrip(msg); got[3] != '3'^0xff || got[4] != '4' {
		t.Fatalf("flip: %q", got)
	}
	if got, _ := roundtrip(msg); !bytes.Equal(got, msg) {
		t.Fatalf("flip is once: %q", got)
	}
	p.Set(Fault{Kind: Stall, In: ToClient, After: 4})
	if got, err := roundtrip(msg); len(got) != 4 || err == nil {
		t.Fatalf("stall: %q %v", got, err)
	}
	if got, err := roundtrip(msg); len(got) != 0 || err == nil {
		t.Fatalf("stalled for new connections: %q %v", got, err)
	}
	p.Set(Fault{}) // the stalled connections drain before the cut counts
	time.Sleep(100 * time.Millisecond)
	p.Set(Fault{Kind: Cut, In: ToServer, After: 5})
	if got, err := roundtrip(msg); len(got) > 5 || err == nil {
		t.Fatalf("cut: %q %v", got, err)
	}
	if got, err := roundtrip(msg); !bytes.Equal(got, msg) {
		t.Fatalf("after the cut: %q %v", got, err)
	}
}
