package remote

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/drover/drover/internal/engine"
)

// Manager is the connection manager: it pools SSH connections by
// (address, port, user, credentials), runs many sessions over each, caps
// connections per host and connection set-ups across hosts, queues the
// rest in arrival order, closes idle connections and replaces broken ones.
// It implements engine.Executor and engine.Copier.
type Manager struct {
	opts   Options
	sshcfg *sshConfig
	hk     *hostKeys
	keys   keyCache
	hs     *fifoSem
	m      counters

	// calls ends when Close starts: Exec and Copy calls in flight are
	// cancelled under it and clean up on the hosts.
	calls       context.Context
	cancelCalls context.CancelFunc
	// base ends once those calls have returned; dials, keepalives and
	// the sweeper run under it.
	base   context.Context
	cancel context.CancelFunc
	ops    sync.WaitGroup // Exec and Copy calls in flight
	bg     sync.WaitGroup // dials, watchers, the sweeper

	mu    sync.Mutex
	pools map[poolKey]*pool
	// closing refuses new calls; closed also refuses sessions, once the
	// calls in flight have cleaned up.
	closing  bool
	closed   bool
	detached bool
	// consumed records steps whose result this process has delivered (or
	// whose command it killed): running such a step again is a retry and
	// must start the command afresh instead of collecting the old result.
	consumed map[stepRef]bool
}

type stepRef struct {
	host poolKey
	job  string
	step string
}

type counters struct {
	dials, handshakes, handshakeFailures   atomic.Int64
	connsOpen, sessionsOpen, waiting       atomic.Int64
	handshaking, maxHandshaking, hostKeys  atomic.Int64
	reattached, redials, commandsCollected atomic.Int64
	sessionsStarted, agentsStarted         atomic.Int64
	agentRequests, agentsIdle              atomic.Int64
}

// Metrics is a snapshot of the manager's counters.
type Metrics struct {
	Dials                 int64 // TCP connections attempted
	Handshakes            int64 // SSH handshakes completed
	HandshakeFailures     int64 // connection attempts that failed
	ConnsOpen             int64 // connections open now
	SessionsOpen          int64 // SSH sessions serving a call now
	SessionsStarted       int64 // SSH sessions opened in all
	AgentsStarted         int64 // agent sessions started in all
	AgentsIdle            int64 // agent sessions open and idle now
	AgentRequests         int64 // requests (launches and helpers) sent to agents
	Waiting               int64 // requests queued for a session now
	HandshakesInFlight    int64 // connection set-ups in progress now
	MaxHandshakesInFlight int64 // the most set-ups ever in progress at once
	HostKeysAdded         int64 // keys recorded with AcceptNewHostKeys
	Reattached            int64 // Exec calls that re-attached to a running command
	Collected             int64 // Exec calls that collected a finished command's result
	Redials               int64 // connections replaced after breaking
}

// Metrics returns the current counters.
func (m *Manager) Metrics() Metrics {
	return Metrics{
		Dials:                 m.m.dials.Load(),
		Handshakes:            m.m.handshakes.Load(),
		HandshakeFailures:     m.m.handshakeFailures.Load(),
		ConnsOpen:             m.m.connsOpen.Load(),
		SessionsOpen:          m.m.sessionsOpen.Load(),
		SessionsStarted:       m.m.sessionsStarted.Load(),
		AgentsStarted:         m.m.agentsStarted.Load(),
		AgentsIdle:            m.m.agentsIdle.Load(),
		AgentRequests:         m.m.agentRequests.Load(),
		Waiting:               m.m.waiting.Load(),
		HandshakesInFlight:    m.m.handshaking.Load(),
		MaxHandshakesInFlight: m.m.maxHandshaking.Load(),
		HostKeysAdded:         m.m.hostKeys.Load(),
		Reattached:            m.m.reattached.Load(),
		Collected:             m.m.commandsCollected.Load(),
		Redials:               m.m.redials.Load(),
	}
}

type pool struct {
	key     poolKey
	target  *target
	conns   []*conn
	dialing int
	waiters list.List // of *waiter, in arrival order
	// broke is set when a connection of this pool broke, so the next dial
	// counts as a re-dial.
	broke bool
}

type waiter struct {
	ready chan grant
	elem  *list.Element
}

type grant struct {
	c   *conn
	err error
}

type conn struct {
	pool     *pool
	client   *ssh.Client
	sessions int // session slots in use
	// idle agents keep their sessions open between calls: with the slots
	// in use they stay within capacity, and a call taking a slot takes an
	// idle agent first.
	idle       []*shAgent
	capacity   int // lowered if the server allows fewer sessions
	tunnels    int // ProxyJump channels carried for other connections
	idleSweeps int
	broken     bool
	done       chan struct{}
}

// New returns a manager. Close (or Detach) releases it.
func New(opts Options) (*Manager, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Manager{opts: o, pools: map[poolKey]*pool{}, consumed: map[stepRef]bool{}}
	if m.sshcfg, err = loadSSHConfig(o.SSHConfig); err != nil {
		return nil, err
	}
	if m.hk, err = newHostKeys(o.KnownHosts, o.AcceptNewHostKeys, o.Logger, &m.m.hostKeys); err != nil {
		return nil, err
	}
	m.hs = newFIFOSem(o.MaxHandshakes)
	m.base, m.cancel = context.WithCancel(context.Background())
	m.calls, m.cancelCalls = context.WithCancel(m.base)
	m.bg.Add(1)
	go m.sweeper()
	return m, nil
}

// Close stops the manager: calls in flight are cancelled (their remote
// commands killed, as on a stop), then every connection is closed. It is
// idempotent.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return nil
	}
	m.closing = true
	m.mu.Unlock()
	m.cancelCalls()
	m.ops.Wait()
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.closeAll()
	m.bg.Wait()
	return nil
}

// Detach drops every connection without touching what runs on the hosts,
// as a crash of the controller would: calls in flight return ErrDetached
// and their supervised commands go on, for a later manager (the resumed
// job) to re-attach to or collect. Use it when the controller shuts down
// meaning to resume its jobs. The manager is closed afterwards.
func (m *Manager) Detach() {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return
	}
	m.closing, m.closed, m.detached = true, true, true
	m.mu.Unlock()
	m.closeAll()
	m.cancel()
	m.ops.Wait()
	m.bg.Wait()
}

func (m *Manager) isDetached() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.detached
}

func (m *Manager) closeAll() {
	m.mu.Lock()
	var clients []*ssh.Client
	for _, p := range m.pools {
		for _, c := range p.conns {
			c.broken = true
			m.dropIdleLocked(c)
			clients = append(clients, c.client)
		}
		for e := p.waiters.Front(); e != nil; e = e.Next() {
			w := e.Value.(*waiter)
			w.elem = nil
			w.ready <- grant{err: ErrClosed}
		}
		p.waiters.Init()
	}
	m.mu.Unlock()
	for _, c := range clients {
		c.Close()
	}
}

// begin registers a call in flight; it fails once the manager is closed.
func (m *Manager) begin() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return ErrClosed
	}
	m.ops.Add(1)
	return nil
}

// acquire returns a connection to t with a session slot reserved for the
// caller, who must release it. Requests for one host are served in
// arrival order: one already queued goes before a new one.
func (m *Manager) acquire(ctx context.Context, t *target) (*conn, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	p := m.pools[t.key]
	if p == nil {
		p = &pool{key: t.key}
		m.pools[t.key] = p
	}
	p.target = t
	if p.waiters.Len() == 0 {
		if c := p.free(); c != nil {
			c.sessions++
			c.idleSweeps = 0
			m.mu.Unlock()
			return c, nil
		}
	}
	w := &waiter{ready: make(chan grant, 1)}
	w.elem = p.waiters.PushBack(w)
	m.m.waiting.Add(1)
	m.dispatch(p)
	m.mu.Unlock()

	select {
	case g := <-w.ready:
		m.m.waiting.Add(-1)
		return g.c, g.err
	case <-ctx.Done():
		m.mu.Lock()
		if w.elem != nil {
			p.waiters.Remove(w.elem)
			w.elem = nil
			m.mu.Unlock()
			m.m.waiting.Add(-1)
			return nil, ctx.Err()
		}
		m.mu.Unlock()
		// Granted meanwhile: hand the slot back.
		g := <-w.ready
		m.m.waiting.Add(-1)
		if g.c != nil {
			m.release(g.c)
		}
		return nil, ctx.Err()
	}
}

// free returns a healthy connection with a session slot, or nil.
func (p *pool) free() *conn {
	for _, c := range p.conns {
		if !c.broken && c.sessions < c.capacity {
			return c
		}
	}
	return nil
}

// dispatch hands free slots to waiters in order and starts the dials the
// queue needs. Called with m.mu held.
func (m *Manager) dispatch(p *pool) {
	for p.waiters.Len() > 0 {
		c := p.free()
		if c == nil {
			break
		}
		w := p.waiters.Remove(p.waiters.Front()).(*waiter)
		w.elem = nil
		c.sessions++
		c.idleSweeps = 0
		w.ready <- grant{c: c}
	}
	if p.waiters.Len() == 0 || m.closed {
		return
	}
	need := p.waiters.Len() - p.dialing*m.opts.MaxSessionsPerConn
	for need > 0 && len(p.conns)+p.dialing < m.opts.MaxConnsPerHost {
		p.dialing++
		need -= m.opts.MaxSessionsPerConn
		redial := p.broke
		p.broke = false
		// The place in the handshake queue is taken now, under the lock,
		// so hosts are set up in the order their requests arrived. A host
		// behind a ProxyJump queues once its hop is connected instead:
		// holding a place while the hop waits for one could deadlock.
		var tk *ticket
		if p.target.jump == nil {
			tk = m.hs.enqueue()
		}
		m.bg.Add(1)
		go m.dial(p, p.target, tk, redial)
	}
}

func (m *Manager) dial(p *pool, t *target, tk *ticket, redial bool) {
	defer m.bg.Done()
	client, err := m.connect(m.base, t, tk)
	m.mu.Lock()
	defer m.mu.Unlock()
	p.dialing--
	if err != nil {
		if m.base.Err() != nil {
			err = ErrClosed
		}
		if len(p.conns) == 0 && p.dialing == 0 {
			// Nothing will serve the queue: everyone waiting for this host
			// gets the error; the next request dials again.
			for p.waiters.Len() > 0 {
				w := p.waiters.Remove(p.waiters.Front()).(*waiter)
				w.elem = nil
				w.ready <- grant{err: err}
			}
		}
		return
	}
	if m.closed {
		client.Close()
		return
	}
	if redial {
		m.m.redials.Add(1)
	}
	c := &conn{pool: p, client: client, capacity: m.opts.MaxSessionsPerConn, done: make(chan struct{})}
	p.conns = append(p.conns, c)
	m.m.connsOpen.Add(1)
	m.bg.Add(1)
	go m.watch(c)
	m.dispatch(p)
}

// release returns a session slot.
func (m *Manager) release(c *conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c.sessions--
	m.dispatch(c.pool)
}

// markBroken takes c out of its pool and closes it; the next request
// dials anew.
func (m *Manager) markBroken(c *conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.removeLocked(c, true)
}

func (m *Manager) removeLocked(c *conn, broken bool) {
	p := c.pool
	for i, x := range p.conns {
		if x == c {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			m.m.connsOpen.Add(-1)
			if broken {
				p.broke = true
			}
			break
		}
	}
	m.dropIdleLocked(c)
	if !c.broken {
		c.broken = true
		go c.client.Close()
	}
	m.dispatch(p)
}

// dropIdleLocked forgets c's idle agents: closing c ends them. Called
// with m.mu held.
func (m *Manager) dropIdleLocked(c *conn) {
	m.m.agentsIdle.Add(-int64(len(c.idle)))
	c.idle = nil
}

// watch notices a connection's end (killed, reset, closed by the server)
// and probes it with keepalives, so a dead one is replaced before a
// command is sent into it.
func (m *Manager) watch(c *conn) {
	defer m.bg.Done()
	ended := make(chan struct{})
	go func() {
		c.client.Wait()
		close(ended)
	}()
	var tick <-chan time.Time
	if m.opts.KeepaliveInterval > 0 {
		t := time.NewTicker(m.opts.KeepaliveInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ended:
			m.markBroken(c)
			return
		case <-tick:
			if !m.keepalive(c, ended) {
				m.opts.Logger.Info("connection broken: keepalive unanswered", "addr", c.pool.target.String())
				m.markBroken(c)
				<-ended
				return
			}
		}
	}
}

func (m *Manager) keepalive(c *conn, ended <-chan struct{}) bool {
	reply := make(chan error, 1)
	go func() {
		// OpenSSH answers unknown global requests with a failure, which
		// proves the connection alive just as well.
		_, _, err := c.client.SendRequest("keepalive@openssh.com", true, nil)
		reply <- err
	}()
	timer := time.NewTimer(m.opts.KeepaliveInterval)
	defer timer.Stop()
	select {
	case err := <-reply:
		return err == nil
	case <-ended:
		return false
	case <-timer.C:
		return false
	}
}

func (m *Manager) sweeper() {
	defer m.bg.Done()
	t := time.NewTicker(m.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-m.base.Done():
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep closes connections that were idle through two sweeps in a row,
// and forgets empty pools.
func (m *Manager) sweep() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, p := range m.pools {
		for _, c := range append([]*conn(nil), p.conns...) {
			if c.sessions > 0 || c.tunnels > 0 {
				c.idleSweeps = 0
				continue
			}
			c.idleSweeps++
			if c.idleSweeps >= 2 {
				m.opts.Logger.Debug("closing idle connection", "addr", p.target.String())
				m.removeLocked(c, false)
			}
		}
		if len(p.conns) == 0 && p.dialing == 0 && p.waiters.Len() == 0 {
			delete(m.pools, key)
		}
	}
}

// session opens an SSH session on c. A failure to open one means the
// connection is gone (it is then replaced), unless the server answered
// with a refusal: sshd frees a session slot only once it has read the
// close of the previous session, so a slot released here may still be
// taken there for a moment. Refusals are retried briefly; if they last,
// the server allows fewer sessions than configured and c's cap is lowered.
func (m *Manager) session(c *conn) (*ssh.Session, error) {
	delay := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		s, err := c.client.NewSession()
		if err == nil {
			m.m.sessionsOpen.Add(1)
			m.m.sessionsStarted.Add(1)
			return s, nil
		}
		var oce *ssh.OpenChannelError
		if !errors.As(err, &oce) {
			m.markBroken(c)
			return nil, fmt.Errorf("open session: %w", err)
		}
		if attempt < 6 {
			time.Sleep(delay)
			delay *= 2
			continue
		}
		m.mu.Lock()
		lowered := c.sessions > 1 && c.capacity >= c.sessions
		if lowered {
			c.capacity = c.sessions - 1
		}
		m.mu.Unlock()
		if !lowered {
			return nil, fmt.Errorf("open session: %w", err)
		}
		m.opts.Logger.Warn("server allows fewer sessions per connection than configured", "addr", c.pool.target.String(), "sessions", c.sessions-1)
		return nil, errSessionRefused
	}
}

var errSessionRefused = errors.New("server refused another session on this connection")

func (m *Manager) closeSession(s *ssh.Session) {
	s.Close()
	m.m.sessionsOpen.Add(-1)
}

// withSession runs fn in a new session on a pooled connection to t. When
// the session cannot be opened, nothing has run yet, so it tries again on
// another (or a fresh) connection.
func (m *Manager) withSession(ctx context.Context, t *target, fn func(c *conn, s *ssh.Session) error) error {
	for attempt := 0; ; attempt++ {
		c, err := m.acquire(ctx, t)
		if err != nil {
			return err
		}
		m.mu.Lock()
		m.trimIdleLocked(c)
		m.mu.Unlock()
		s, err := m.session(c)
		if err != nil {
			m.release(c)
			if attempt < 3 && ctx.Err() == nil && !m.isClosed() {
				continue
			}
			return t.err(ErrConnectionDropped, err, "")
		}
		err = fn(c, s)
		m.closeSession(s)
		m.release(c)
		return err
	}
}

func (m *Manager) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// connect makes a new connection to t, retrying network failures. tk,
// when set, is the first attempt's place in the handshake queue; later
// attempts queue again at the back.
func (m *Manager) connect(ctx context.Context, t *target, tk *ticket) (*ssh.Client, error) {
	for attempt := 0; ; attempt++ {
		client, err := m.connectOnce(ctx, t, tk)
		tk = nil
		if err == nil {
			return client, nil
		}
		m.m.handshakeFailures.Add(1)
		if !retryable(err) || attempt >= m.opts.ConnectRetries || ctx.Err() != nil {
			return nil, err
		}
		m.opts.Logger.Info("connection failed, retrying", "host", t.name, "addr", t.String(), "attempt", attempt+1, "err", err)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(m.opts.RetryInterval):
		}
	}
}

func (m *Manager) connectOnce(ctx context.Context, t *target, tk *ticket) (*ssh.Client, error) {
	var jump *conn
	if t.jump != nil {
		// The hop's connection comes first and outside the handshake slot
		// below, so a chain cannot deadlock on MaxHandshakes.
		c, err := m.acquire(ctx, t.jump)
		if err != nil {
			return nil, t.err(ErrUnreachable, fmt.Errorf("through ProxyJump %s: %w", t.jump.String(), err), "")
		}
		m.mu.Lock()
		c.tunnels++
		m.mu.Unlock()
		m.release(c)
		jump = c
	}
	dropTunnel := func() {
		if jump != nil {
			m.mu.Lock()
			jump.tunnels--
			m.mu.Unlock()
			jump = nil
		}
	}

	if tk == nil {
		tk = m.hs.enqueue()
	}
	if err := tk.wait(ctx); err != nil {
		dropTunnel()
		return nil, t.err(ErrUnreachable, err, "")
	}
	m.opts.Logger.Debug("connecting", "host", t.name, "addr", t.String())
	n := m.m.handshaking.Add(1)
	for {
		old := m.m.maxHandshaking.Load()
		if n <= old || m.m.maxHandshaking.CompareAndSwap(old, n) {
			break
		}
	}
	defer func() {
		m.m.handshaking.Add(-1)
		m.hs.release()
	}()

	ctx, cancel := context.WithTimeout(ctx, m.opts.ConnectTimeout)
	defer cancel()
	addr := t.addr()
	m.m.dials.Add(1)
	var nc net.Conn
	var err error
	if jump != nil {
		nc, err = jump.client.DialContext(ctx, "tcp", addr)
		if err == nil {
			nc = &tunnelConn{Conn: nc, done: dropTunnel}
		} else {
			dropTunnel()
		}
	} else {
		d := net.Dialer{KeepAlive: 30 * time.Second}
		nc, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return nil, t.err(ErrUnreachable, err, unreachableHint(err))
	}
	// The handshake has no context of its own: a deadline bounds it, and
	// closing the socket aborts it when ctx ends first.
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()

	known, err := m.hk.known(addr)
	if err != nil {
		nc.Close()
		return nil, t.err(ErrHostKeyUnknown, err, "")
	}
	a := m.authFor(t)
	defer a.close()
	var hostKeyErr error
	cfg := &ssh.ClientConfig{
		User: t.user,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(a.signers...)},
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			hostKeyErr = m.hk.verify(t, addr, remote, key)
			return hostKeyErr
		},
		HostKeyAlgorithms: algorithms(known),
		Timeout:           m.opts.ConnectTimeout,
	}
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if err != nil {
		nc.Close()
		switch {
		case hostKeyErr != nil:
			return nil, hostKeyErr
		case strings.Contains(err.Error(), "unable to authenticate"):
			hint := "no key was offered: add IdentityFile to ~/.ssh/config, load a key into ssh-agent, or pass an identity file"
			if len(a.offered) > 0 {
				hint = "keys tried: " + strings.Join(a.offered, "; ") + "; check the user name and the host's authorized_keys"
			}
			return nil, t.err(ErrAuth, fmt.Errorf("user %s refused", t.user), hint)
		case strings.Contains(err.Error(), "no common algorithm for host key"):
			var ks []string
			for _, k := range known {
				ks = append(ks, fmt.Sprintf("%s:%d %s", k.Filename, k.Line, describeKey(k.Key)))
			}
			return nil, t.err(ErrHostKeyChanged, fmt.Errorf("it offers no key of the types known_hosts holds for it (%s)", strings.Join(ks, ", ")),
				"if the host was reinstalled, verify its new key and replace the old one with ssh-keygen -R")
		case ctx.Err() != nil:
			return nil, t.err(ErrUnreachable, fmt.Errorf("handshake: %w", ctx.Err()), "the host accepted the connection but its SSH server did not answer in time")
		default:
			// An sshd dropping the connection before authentication
			// (MaxStartups, a restart) is worth another attempt.
			return nil, t.err(ErrUnreachable, fmt.Errorf("handshake: %w", err), "")
		}
	}
	nc.SetDeadline(time.Time{})
	m.m.handshakes.Add(1)
	return ssh.NewClient(sc, chans, reqs), nil
}

func unreachableHint(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "connection refused"):
		return "nothing listens on that port: check that sshd runs there and the address and port are right"
	case strings.Contains(s, "no such host"):
		return "the name does not resolve: check the inventory's ansible_host or HostName in ~/.ssh/config"
	case errors.Is(err, context.DeadlineExceeded) || strings.Contains(s, "timeout"):
		return "no answer in time: check that the host is up and no firewall drops SSH"
	}
	return "check the network path to the host"
}

// tunnelConn releases the ProxyJump connection's hold when the tunnelled
// connection closes.
type tunnelConn struct {
	net.Conn
	once sync.Once
	done func()
}

func (c *tunnelConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.done)
	return err
}

// fifoSem is a counting semaphore that admits waiters in arrival order.
// A place in line is taken with enqueue, which does not block, so that a
// caller can queue under its own lock and wait elsewhere.
type fifoSem struct {
	mu    sync.Mutex
	n     int
	limit int
	queue list.List // of chan struct{}
}

func newFIFOSem(limit int) *fifoSem { return &fifoSem{limit: limit} }

type ticket struct {
	s  *fifoSem
	ch chan struct{}
	e  *list.Element
}

func (s *fifoSem) enqueue() *ticket {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := &ticket{s: s, ch: make(chan struct{})}
	if s.n < s.limit && s.queue.Len() == 0 {
		s.n++
		close(t.ch)
	} else {
		t.e = s.queue.PushBack(t.ch)
	}
	return t
}

// wait blocks until the ticket is admitted; the holder must release.
func (t *ticket) wait(ctx context.Context) error {
	select {
	case <-t.ch:
		return nil
	case <-ctx.Done():
		t.s.mu.Lock()
		select {
		case <-t.ch:
			// Admitted as ctx ended: pass it on.
			t.s.mu.Unlock()
			t.s.release()
		default:
			t.s.queue.Remove(t.e)
			t.s.mu.Unlock()
		}
		return ctx.Err()
	}
}

func (s *fifoSem) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.queue.Front(); f != nil {
		// The slot passes straight to the next in line; n is unchanged.
		close(s.queue.Remove(f).(chan struct{}))
		return
	}
	s.n--
}

var (
	_ io.Closer       = (*Manager)(nil)
	_ engine.Executor = (*Manager)(nil)
	_ engine.Copier   = (*Manager)(nil)
)
