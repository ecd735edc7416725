package remote

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"golang.org/x/crypto/ssh"
)

// A shAgent is one long-lived SSH session running agentScript: it serves
// supervised launches and helper scripts one at a time, so a step costs
// the host a subshell and a few forks instead of a whole session (sshd's
// fork, login and channel set-up, the largest cost on a busy host). A
// connection keeps its idle agents for the next call; parallel calls to
// one host open more, within the connection's session cap.
//
// An agent whose session ended, whose call was cancelled or whose
// answer broke the protocol is discarded: its session is closed and a
// later call opens another. Requests are idempotent (launches re-attach
// by token, helpers clean or stop), so a call that failed with its agent
// may be sent again to another.
type shAgent struct {
	c     *conn
	s     *ssh.Session
	stdin io.WriteCloser
	ended chan struct{} // closed once the session has ended

	mu  sync.Mutex
	cur *agentRequest // the request being answered, nil between requests
	// answered counts requests served; output before the first is the
	// login shell's noise, which the first request's parsers skip.
	answered int
	// broken agents are not parked again.
	broken bool
}

type agentRequest struct {
	out      *stdoutParser
	err      *stderrParser
	done     chan struct{} // closed once both streams have ended
	received bool          // any byte of the answer arrived
}

// agentSink receives one of the agent session's output streams and
// hands it to the current request's parser.
type agentSink struct {
	a      *shAgent
	stderr bool
}

func (w agentSink) Write(p []byte) (int, error) {
	a := w.a
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.cur
	if r == nil {
		// Nothing is asked: bytes now break the framing.
		if a.answered > 0 && len(bytes.TrimSpace(p)) > 0 {
			a.broken = true
		}
		return len(p), nil
	}
	r.received = true
	if w.stderr {
		r.err.Write(p)
	} else {
		r.out.Write(p)
	}
	if r.out.complete() && r.err.ended {
		a.cur = nil
		a.answered++
		close(r.done)
	}
	return len(p), nil
}

// startAgent opens a session on c and starts an agent in it.
func (m *Manager) startAgent(c *conn) (*shAgent, error) {
	s, err := m.session(c)
	if err != nil {
		return nil, err
	}
	a := &shAgent{c: c, s: s, ended: make(chan struct{})}
	// Pipes read here with small buffers rather than io.Copy's 32 KiB
	// each: an agent lives as long as its connection.
	stdout, err := s.StdoutPipe()
	if err != nil {
		m.closeSession(s)
		return nil, fmt.Errorf("agent stdout: %w", err)
	}
	stderr, err := s.StderrPipe()
	if err != nil {
		m.closeSession(s)
		return nil, fmt.Errorf("agent stderr: %w", err)
	}
	if a.stdin, err = s.StdinPipe(); err != nil {
		m.closeSession(s)
		return nil, fmt.Errorf("agent stdin: %w", err)
	}
	if err := s.Start(shellCommand(agentScript, m.opts.RunDir)); err != nil {
		m.closeSession(s)
		return nil, fmt.Errorf("start the agent: %w", err)
	}
	m.m.agentsStarted.Add(1)
	var copies sync.WaitGroup
	for _, r := range []struct {
		from io.Reader
		to   agentSink
	}{{stdout, agentSink{a: a}}, {stderr, agentSink{a: a, stderr: true}}} {
		copies.Add(1)
		go func() {
			defer copies.Done()
			buf := make([]byte, 8<<10)
			for {
				n, err := r.from.Read(buf)
				if n > 0 {
					r.to.Write(buf[:n])
				}
				if err != nil {
					return
				}
			}
		}()
	}
	go func() {
		// Wait returns once the channel closed; the output read by then
		// must reach the request before it is told the session ended.
		s.Wait()
		copies.Wait()
		close(a.ended)
	}()
	return a, nil
}

func (a *shAgent) isEnded() bool {
	select {
	case <-a.ended:
		return true
	default:
		return false
	}
}

// errAgentEnded means the agent's session ended under a request: the
// connection dropped, or something on the host killed the agent.
var errAgentEnded = errors.New("the session ended")

// do sends one request and waits for its whole answer, which out and
// errp parse. It returns errAgentEnded (wrapped) when the session ended
// first, or ctx's error, and marks the agent broken in both cases.
func (a *shAgent) do(ctx context.Context, nonce, op string, args []string, stdin []byte, out *stdoutParser, errp *stderrParser) (received bool, err error) {
	r := &agentRequest{out: out, err: errp, done: make(chan struct{})}
	a.mu.Lock()
	a.cur = r
	a.mu.Unlock()
	finish := func(broken bool) bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.cur == r {
			a.cur = nil
		}
		if broken {
			a.broken = true
		}
		return r.received
	}

	var b bytes.Buffer
	b.Grow(len(nonce)*2 + 64 + len(stdin))
	b.WriteString(nonce)
	b.WriteByte(' ')
	b.WriteString(op)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(stdin)))
	b.WriteByte('\n')
	for _, s := range args {
		b.WriteString(shellQuote(s))
		b.WriteByte(' ')
	}
	b.WriteByte('\n')
	b.WriteString(nonce)
	b.WriteByte('\n')
	b.Write(stdin)
	// The write may block on the channel's window (a large stdin), and
	// must not outlive ctx: closing the session unblocks it.
	wrote := make(chan error, 1)
	go func() {
		_, err := a.stdin.Write(b.Bytes())
		wrote <- err
	}()
	for {
		select {
		case <-r.done:
			return finish(false), nil
		case err := <-wrote:
			if err != nil {
				a.s.Close()
				<-a.ended
				return finish(true), fmt.Errorf("send a request: %w", err)
			}
			wrote = nil
		case <-a.ended:
			select {
			case <-r.done:
				// The answer was whole before the session ended.
				return finish(true), nil
			default:
			}
			return finish(true), errAgentEnded
		case <-ctx.Done():
			a.s.Close()
			return finish(true), ctx.Err()
		}
	}
}

// withAgent runs fn with an agent on a pooled connection to t: an idle
// one when the connection has one, else a new one. A reused agent that
// turns out dead before answering anything is replaced and fn run again.
func (m *Manager) withAgent(ctx context.Context, t *target, fn func(a *shAgent) (received bool, err error)) error {
	for attempt := 0; ; attempt++ {
		c, err := m.acquire(ctx, t)
		if err != nil {
			return err
		}
		a, reused, err := m.takeAgent(c)
		if err != nil {
			m.release(c)
			if attempt < 3 && ctx.Err() == nil && !m.isClosed() {
				continue
			}
			return t.err(ErrConnectionDropped, err, "")
		}
		m.m.agentRequests.Add(1)
		received, err := fn(a)
		m.parkAgent(a)
		m.release(c)
		if err != nil && reused && !received && ctx.Err() == nil && attempt < 3 && !m.isClosed() {
			// An idle agent that died meanwhile: nothing was done.
			continue
		}
		if errors.Is(err, errAgentEnded) {
			return t.err(ErrConnectionDropped, err, "")
		}
		return err
	}
}

// takeAgent returns an idle agent of c, or starts one. The caller holds
// a session slot of c, which the agent fills.
func (m *Manager) takeAgent(c *conn) (a *shAgent, reused bool, err error) {
	m.mu.Lock()
	for len(c.idle) > 0 {
		a = c.idle[len(c.idle)-1]
		c.idle = c.idle[:len(c.idle)-1]
		m.m.agentsIdle.Add(-1)
		if !a.isEnded() {
			m.m.sessionsOpen.Add(1)
			m.mu.Unlock()
			return a, true, nil
		}
		go a.s.Close()
	}
	m.mu.Unlock()
	a, err = m.startAgent(c)
	return a, false, err
}

// parkAgent keeps a after a request, for the next one on its connection,
// or closes it when it cannot serve another.
func (m *Manager) parkAgent(a *shAgent) {
	a.mu.Lock()
	broken := a.broken || a.cur != nil
	a.mu.Unlock()
	m.mu.Lock()
	if !broken && !a.c.broken && !a.isEnded() && !m.closed {
		a.c.idle = append(a.c.idle, a)
		m.m.agentsIdle.Add(1)
		m.m.sessionsOpen.Add(-1)
		m.mu.Unlock()
		return
	}
	m.mu.Unlock()
	m.closeSession(a.s)
}

// trimIdleLocked closes idle agents of c until the sessions in use and
// the idle ones fit c's cap, making room for a session of another kind.
// Called with m.mu held.
func (m *Manager) trimIdleLocked(c *conn) {
	for len(c.idle) > 0 && c.sessions+len(c.idle) > c.capacity {
		a := c.idle[0]
		c.idle = c.idle[1:]
		m.m.agentsIdle.Add(-1)
		go a.s.Close()
	}
}

// runHelper runs one of the agent's helper requests (K, F, or X with a
// script and its arguments) and returns its output; a non-zero exit is
// an error.
func (m *Manager) runHelper(ctx context.Context, t *target, op string, args ...string) ([]byte, []byte, error) {
	return m.helper(ctx, t, false, op, args...)
}

// helper is runHelper; with last, the agent is closed afterwards instead
// of kept for the next call.
func (m *Manager) helper(ctx context.Context, t *target, last bool, op string, args ...string) ([]byte, []byte, error) {
	var stdout, stderr lineBuffer
	stdout.emit = func(string, string) {}
	stderr.emit = stdout.emit
	var tr trailer
	var ok bool
	err := m.withAgent(ctx, t, func(a *shAgent) (bool, error) {
		stdout.buf.Reset()
		stderr.buf.Reset()
		stdout.lineStart, stderr.lineStart = 0, 0
		nonce := randomHex(16)
		out := &stdoutParser{nonce: []byte(nonce), sink: &stdout}
		errp := &stderrParser{nonce: []byte(nonce), sink: &stderr}
		received, err := a.do(ctx, nonce, op, args, nil, out, errp)
		if last {
			a.mu.Lock()
			a.broken = true
			a.mu.Unlock()
		}
		if err == nil {
			if tr, ok = out.result(); !ok {
				err = errAgentEnded
			}
		}
		return received, err
	})
	if err != nil {
		return stdout.buf.Bytes(), stderr.buf.Bytes(), err
	}
	errText := bytes.TrimSpace(stderr.buf.Bytes())
	switch {
	case tr.kind == 'E':
		return stdout.buf.Bytes(), stderr.buf.Bytes(), t.err(ErrProtocol, errors.New(tr.msg), "")
	case tr.kind != 'R':
		return stdout.buf.Bytes(), stderr.buf.Bytes(), t.err(ErrProtocol, fmt.Errorf("unexpected answer %q", tr.kind), "")
	case tr.code != 0:
		return stdout.buf.Bytes(), stderr.buf.Bytes(), fmt.Errorf("host %s: exit status %d: %s", t.name, tr.code, errText)
	}
	return stdout.buf.Bytes(), stderr.buf.Bytes(), nil
}
