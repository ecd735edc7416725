package remote

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/drover/drover/internal/engine"
)

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Exec runs c.Cmd on c.Host as a supervised command (see the package
// documentation): it survives the controller and the connection, a second
// Exec for the same job and step re-attaches to it or collects its result
// instead of running it again, and cancelling ctx kills its process group
// on the host.
func (m *Manager) Exec(ctx context.Context, c *engine.Command) (*engine.CommandResult, error) {
	if err := m.begin(); err != nil {
		return nil, err
	}
	defer m.ops.Done()
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(m.calls, cancel)
	defer stop()

	start := time.Now()
	t, err := m.resolve(c.Host)
	if err != nil {
		return nil, err
	}
	script, err := commandScript(c.Cmd, c.Env)
	if err != nil {
		return nil, err
	}
	ref := stepRef{host: t.key, job: c.JobID, step: c.StepKey}
	x := &execution{
		dir:   m.stepDir(c.JobID, c.StepKey),
		token: randomHex(16),
		fresh: m.isConsumed(ref) || c.Fresh,
		stdin: c.Stdin,
		cmd:   script,
	}
	var lineMu sync.Mutex
	emit := func(stream, line string) {
		if c.Line != nil {
			lineMu.Lock()
			defer lineMu.Unlock()
			c.Line(stream, line)
		}
	}
	x.out.stream, x.out.emit = "stdout", emit
	x.err.stream, x.err.emit = "stderr", emit

	var dropped *Error // the first drop after the command started
	for attempt := 0; ; attempt++ {
		tr, err := m.runOnce(ctx, t, x)
		if err == nil {
			switch tr.kind {
			case 'R':
				m.consume(ref)
				x.out.flush()
				x.err.flush()
				return &engine.CommandResult{Stdout: x.out.buf.String(), Stderr: x.err.buf.String(), Code: tr.code, Duration: time.Since(start)}, nil
			case 'L':
				m.consume(ref)
				return nil, t.err(ErrCommandLost, fmt.Errorf("step %s of job %s was started (state in ~/%s) but no longer runs and recorded no exit code", c.StepKey, c.JobID, x.dir),
					"the host may have rebooted or something killed the process; its effects are unknown, running the step again starts it anew")
			case 'K':
				if ctx.Err() == nil {
					m.consume(ref)
					return nil, t.err(ErrCommandLost, fmt.Errorf("step %s of job %s was stopped on the host while this call waited for it", c.StepKey, c.JobID), "")
				}
			default:
				return nil, t.err(ErrProtocol, errors.New(tr.msg), "check that the login's home directory is writable and /bin/sh works there")
			}
		}
		if m.isDetached() {
			return nil, t.err(ErrDetached, err, "the command goes on running on the host; resuming the job re-attaches to it")
		}
		if ctx.Err() != nil {
			m.consume(ref)
			cause := ctx.Err()
			if parent.Err() == nil {
				cause = fmt.Errorf("%w: %w", ErrClosed, cause)
			}
			if kerr := m.kill(t, x); kerr != nil {
				return nil, fmt.Errorf("%w; and stopping the command failed: %w", cause, kerr)
			}
			return nil, cause
		}
		var e *Error
		if errors.As(err, &e) && e.Kind == ErrConnectionDropped && x.launched && dropped == nil {
			dropped = e
		}
		// Connecting has its own retries; this loop re-attaches after a
		// connection dropped under a command (or under its launch).
		if !errors.Is(err, ErrConnectionDropped) && dropped == nil || !retryable(err) || attempt >= m.opts.ConnectRetries {
			if dropped != nil {
				cause := dropped.Err
				if err != error(dropped) {
					cause = fmt.Errorf("%v; re-connecting failed: %w", dropped.Err, err)
				}
				return nil, t.err(ErrConnectionDropped, cause,
					"the command may still be running on the host: it is supervised, so running the step again (a retry or resuming the job) re-attaches to it")
			}
			return nil, err
		}
		m.opts.Logger.Info("connection dropped during a command, re-attaching", "host", t.name, "addr", t.String(), "job", c.JobID, "step", c.StepKey, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(m.opts.RetryInterval):
		}
	}
}

// execution is one Exec call's state across re-attachments.
type execution struct {
	dir      string
	token    string
	fresh    bool
	stdin    []byte
	cmd      string
	launched bool // the wrapper reported the command started or found
	out, err lineBuffer
}

type trailer struct {
	kind byte // R result, K stopped, L lost, E wrapper error
	code int
	msg  string
}

// runOnce sends the launch request to an agent on t: it starts or finds
// the command and streams its output from where this call got to.
func (m *Manager) runOnce(ctx context.Context, t *target, x *execution) (trailer, error) {
	var stdout *stdoutParser
	err := m.withAgent(ctx, t, func(a *shAgent) (bool, error) {
		nonce := randomHex(16)
		fresh := "0"
		if x.fresh {
			fresh = "1"
		}
		args := []string{x.dir, nonce, x.token, fresh,
			strconv.Itoa(x.out.buf.Len()), strconv.Itoa(x.err.buf.Len()), strconv.Itoa(len(x.stdin)), x.cmd}
		stdout = &stdoutParser{nonce: []byte(nonce), sink: &x.out}
		stderr := &stderrParser{nonce: []byte(nonce), sink: &x.err}
		received, err := a.do(ctx, nonce, "L", args, x.stdin, stdout, stderr)
		if stdout.mode != 0 {
			x.launched = true
			switch stdout.mode {
			case 'A':
				m.m.reattached.Add(1)
				m.opts.Logger.Info("re-attached to a running command", "host", t.name, "dir", x.dir)
			case 'D':
				m.m.commandsCollected.Add(1)
				m.opts.Logger.Info("collected the result of a finished command", "host", t.name, "dir", x.dir)
			}
			// A later attempt of this call must find this launch, not
			// discard it.
			x.fresh = false
		}
		return received, err
	})
	if err != nil {
		if ctx.Err() != nil {
			return trailer{}, ctx.Err()
		}
		return trailer{}, err
	}
	if tr, ok := stdout.result(); ok {
		return tr, nil
	}
	return trailer{}, t.err(ErrConnectionDropped, errors.New("while the command ran: the wrapper ended without reporting"), "")
}

// kill stops the command of x on t, with its own deadline: ctx is already
// done when this runs.
func (m *Manager) kill(t *target, x *execution) error {
	ctx, cancel := context.WithTimeout(context.Background(), m.opts.KillGrace+30*time.Second)
	defer cancel()
	grace := strconv.Itoa(int(m.opts.KillGrace / (100 * time.Millisecond)))
	_, _, err := m.runHelper(ctx, t, "K", x.dir, x.token, grace)
	return err
}

// Forget removes what supervised commands of a job left on a host (and
// kills any still running). The engine calls it once the job has ended.
// It goes through the connection's agent, so it costs the host no
// session of its own.
func (m *Manager) Forget(ctx context.Context, h engine.Host, jobID string) error {
	if err := m.begin(); err != nil {
		return err
	}
	defer m.ops.Done()
	t, err := m.resolve(h)
	if err != nil {
		return err
	}
	// The agent that cleaned goes too: a job's end is mostly its host's
	// last call for a while, and an idle agent holds a shell there and
	// some memory here until the connection's idle sweep.
	if _, stderr, err := m.helper(ctx, t, true, "F", m.jobDir(jobID)); err != nil {
		return fmt.Errorf("forget job %s: %w: %s", jobID, err, stderr)
	}
	m.mu.Lock()
	for ref := range m.consumed {
		if ref.host == t.key && ref.job == jobID {
			delete(m.consumed, ref)
		}
	}
	m.mu.Unlock()
	return nil
}

func (m *Manager) isConsumed(ref stepRef) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.consumed[ref]
}

func (m *Manager) consume(ref stepRef) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.consumed[ref] = true
}

// commandScript prefixes the command with its environment. Variables go
// in the script rather than through SSH's env requests, which sshd
// refuses unless AcceptEnv lists them.
func commandScript(cmd string, env map[string]string) (string, error) {
	if len(env) == 0 {
		return cmd, nil
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		if !envName.MatchString(k) {
			return "", fmt.Errorf("environment variable name %q is not valid in sh", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(env[k]))
	}
	b.WriteString(cmd)
	return b.String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// lineBuffer keeps a stream's bytes and hands out complete lines.
type lineBuffer struct {
	buf       bytes.Buffer
	lineStart int
	stream    string
	emit      func(stream, line string)
}

func (l *lineBuffer) write(p []byte) {
	l.buf.Write(p)
	b := l.buf.Bytes()
	for {
		i := bytes.IndexByte(b[l.lineStart:], '\n')
		if i < 0 {
			return
		}
		l.emit(l.stream, string(b[l.lineStart:l.lineStart+i]))
		l.lineStart += i + 1
	}
}

func (l *lineBuffer) flush() {
	if l.lineStart < l.buf.Len() {
		l.emit(l.stream, string(l.buf.Bytes()[l.lineStart:]))
		l.lineStart = l.buf.Len()
	}
}

// stdoutParser splits the launcher's stdout into its header, the
// command's output and the trailer, all marked by the nonce.
type stdoutParser struct {
	nonce   []byte
	sink    *lineBuffer
	state   int // 0 before the header, 1 output, 2 trailer
	mode    byte
	pending []byte
	trailer []byte
}

func (p *stdoutParser) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		switch p.state {
		case 0:
			p.pending = append(p.pending, b...)
			b = nil
			i := bytes.Index(p.pending, p.nonce)
			if i < 0 {
				// Login noise: keep only what could begin the nonce.
				if k := len(p.pending) - len(p.nonce); k > 0 {
					p.pending = append(p.pending[:0], p.pending[k:]...)
				}
				continue
			}
			line := p.pending[i:]
			nl := bytes.IndexByte(line, '\n')
			if nl < 0 {
				p.pending = append(p.pending[:0], line...)
				continue
			}
			head := string(line[len(p.nonce):nl])
			rest := append([]byte(nil), line[nl+1:]...)
			p.pending = p.pending[:0]
			switch h := strings.TrimSpace(head); h {
			case "S", "A", "D":
				p.mode = h[0]
				p.state = 1
			default:
				p.state = 2
				p.trailer = append([]byte(nil), line...)
			}
			b = rest
		case 1:
			p.pending = append(p.pending, b...)
			b = nil
			if i := bytes.Index(p.pending, p.nonce); i >= 0 {
				p.sink.write(p.pending[:i])
				p.trailer = append([]byte(nil), p.pending[i:]...)
				p.pending = nil
				p.state = 2
				continue
			}
			if safe := len(p.pending) - (len(p.nonce) - 1); safe > 0 {
				p.sink.write(p.pending[:safe])
				p.pending = append(p.pending[:0], p.pending[safe:]...)
			}
		case 2:
			p.trailer = append(p.trailer, b...)
			b = nil
		}
	}
	return n, nil
}

// complete tells whether the agent's end of answer arrived.
func (p *stdoutParser) complete() bool {
	if p.state != 2 {
		return false
	}
	end := make([]byte, 0, len(p.nonce)+3)
	end = append(append(end, p.nonce...), " Z\n"...)
	return bytes.Contains(p.trailer, end)
}

// result parses the trailer; ok is false when none arrived (the
// connection dropped, or the launch died without reporting).
func (p *stdoutParser) result() (trailer, bool) {
	line := string(p.trailer)
	i := strings.IndexByte(line, '\n')
	if p.state != 2 || i < 0 {
		return trailer{}, false
	}
	f := strings.Fields(line[len(p.nonce):i])
	if len(f) == 0 {
		return trailer{kind: 'E', msg: "empty trailer"}, true
	}
	switch f[0] {
	case "Z":
		return trailer{}, false
	case "R":
		if len(f) == 2 {
			if code, err := strconv.Atoi(f[1]); err == nil {
				return trailer{kind: 'R', code: code}, true
			}
		}
		return trailer{kind: 'E', msg: "bad exit code record " + strconv.Quote(line[:i])}, true
	case "K", "L":
		return trailer{kind: f[0][0]}, true
	case "E":
		return trailer{kind: 'E', msg: strings.Join(f[1:], " ")}, true
	}
	return trailer{kind: 'E', msg: "unknown record " + strconv.Quote(line[:i])}, true
}

// stderrParser drops what comes before the nonce line (login noise),
// passes the rest to the command's stderr up to the next nonce, which
// ends the answer.
type stderrParser struct {
	nonce   []byte
	sink    *lineBuffer
	started bool
	ended   bool
	pending []byte
}

func (p *stderrParser) Write(b []byte) (int, error) {
	n := len(b)
	if p.ended {
		return n, nil
	}
	p.pending = append(p.pending, b...)
	if !p.started {
		i := bytes.Index(p.pending, p.nonce)
		if i < 0 || len(p.pending) < i+len(p.nonce)+1 {
			if k := len(p.pending) - len(p.nonce) - 1; i < 0 && k > 0 {
				p.pending = append(p.pending[:0], p.pending[k:]...)
			}
			return n, nil
		}
		if p.pending[i+len(p.nonce)] != '\n' {
			// Not the start line: drop through the nonce.
			p.pending = append(p.pending[:0], p.pending[i+len(p.nonce):]...)
			return n, nil
		}
		p.started = true
		p.pending = append(p.pending[:0], p.pending[i+len(p.nonce)+1:]...)
	}
	if i := bytes.Index(p.pending, p.nonce); i >= 0 {
		if i > 0 {
			p.sink.write(p.pending[:i])
		}
		p.pending = nil
		p.ended = true
		return n, nil
	}
	if safe := len(p.pending) - (len(p.nonce) - 1); safe > 0 {
		p.sink.write(p.pending[:safe])
		p.pending = append(p.pending[:0], p.pending[safe:]...)
	}
	return n, nil
}
