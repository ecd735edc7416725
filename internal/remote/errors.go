package remote

import (
	"errors"
	"fmt"
)

// Sentinel errors; every *Error matches one of them with errors.Is, so
// callers branch on the kind without parsing messages.
var (
	// ErrUnreachable: the TCP connection was refused or timed out, or the
	// name did not resolve.
	ErrUnreachable = errors.New("host unreachable")
	// ErrAuth: the host refused every key offered.
	ErrAuth = errors.New("authentication refused")
	// ErrHostKeyUnknown: known_hosts has no key for the host.
	ErrHostKeyUnknown = errors.New("host key unknown")
	// ErrHostKeyChanged: the host presented a key other than the one
	// known_hosts holds for it.
	ErrHostKeyChanged = errors.New("host key changed")
	// ErrConnectionDropped: the connection ended while a command ran and
	// could not be re-established to re-attach to it.
	ErrConnectionDropped = errors.New("connection dropped")
	// ErrCommandLost: the command was started but is no longer running
	// and recorded no exit code (the host rebooted, or the process was
	// killed outside drover); its outcome is unknown.
	ErrCommandLost = errors.New("command lost")
	// ErrDetached: the manager was detached while the call ran; the
	// remote command goes on and a later Exec for the same step
	// re-attaches to it.
	ErrDetached = errors.New("detached from host")
	// ErrClosed: the manager is closed.
	ErrClosed = errors.New("connection manager closed")
	// ErrProtocol: the remote side answered something the wrapper does
	// not understand (no POSIX sh, a full disk, a broken home directory).
	ErrProtocol = errors.New("remote wrapper failed")
)

// Error is a failure to reach or use a host. Its message names the host,
// the cause and what to do about it.
type Error struct {
	Host string // the host as the script or inventory named it
	Addr string // user@address:port actually used
	Kind error  // one of the sentinel errors above
	Err  error  // the underlying cause, may be nil
	Hint string // what to do
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("host %s", e.Host)
	if e.Addr != "" {
		msg += " (" + e.Addr + ")"
	}
	msg += ": " + e.Kind.Error()
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	if e.Hint != "" {
		msg += "; " + e.Hint
	}
	return msg
}

// Unwrap returns both the kind and the cause, so that errors.Is matches
// either (ErrUnreachable, and also context.DeadlineExceeded or a
// *net.OpError).
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// retryable reports whether another connection attempt may succeed: a
// network failure may pass, a refused key or a wrong host key will not.
func retryable(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind == ErrUnreachable || e.Kind == ErrConnectionDropped
	}
	return false
}
