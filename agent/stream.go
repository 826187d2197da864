package agent

import (
	"fmt"
	"net"
	"os"
)

// A helper told StreamEnv connects to volbak there (a socket path, or an
// abstract name after '@'), sends TokenEnv's value and a newline, and
// then reads its input from the connection, or writes its output to it,
// instead of stdin or stdout: the daemon then copies none of it (see
// engine.StreamMode).
const (
	StreamEnv = "VOLBAK_AGENT_STREAM"
	TokenEnv  = "VOLBAK_AGENT_TOKEN"
)

// ExitNoStream is the exit status of a helper that could not connect. It
// did nothing else: volbak runs it again with the attach stream.
const ExitNoStream = 75

// dialStream connects as StreamEnv says, or returns nil if it says
// nothing. It runs first, as root: a backup's helper then drops to nobody
// with the connection open.
func dialStream() (*net.UnixConn, error) {
	addr := os.Getenv(StreamEnv)
	if addr == "" {
		return nil, nil
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: addr, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("connect to volbak's stream socket %s: %w", addr, err)
	}
	if _, err := c.Write([]byte(os.Getenv(TokenEnv) + "\n")); err != nil {
		c.Close()
		return nil, fmt.Errorf("greet volbak's stream socket %s: %w", addr, err)
	}
	return c, nil
}
