// Package engine runs workflow jobs durably: it creates them, replays them
// from their journal, runs their steps, persists them by policy, holds
// them under leases and unloads them while they wait. It depends on the
// Store and Executor interfaces it defines, not on their drivers.
package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/script"
)

// Options configure an Engine.
type Options struct {
	Store  Store
	Local  Executor // runs sh() on the controller
	Remote Executor // runs sh() on other hosts; nil: remote steps fail
	Copier Copier   // copy(); nil: copy fails
	// Hosts resolves a host name used with on= or as a target, for a job.
	// nil: names are SSH destinations as written.
	Hosts  func(ctx context.Context, j *job.Job, name string) (Host, error)
	Logger *slog.Logger
	// Lease is how long a job stays held without a renewal; an engine that
	// dies loses its jobs after this long. Default 30s.
	Lease time.Duration
	// Poll is how often held jobs' leases are renewed and operators'
	// requests picked up. Default 1s.
	Poll time.Duration
	// MaxSteps bounds the Starlark computation of one thread, so a runaway
	// loop fails cleanly. Default 1e8.
	MaxSteps uint64
	// ShortSleep is the longest sleep() a loaded job sleeps in memory;
	// longer sleeps unload the job. Default 5s.
	ShortSleep time.Duration
	// Sender identifies who sends signals from this engine.
	Sender string
	Now    func() time.Time
}

// Engine runs jobs. One Engine is one lease owner.
type Engine struct {
	store   Store
	local   Executor
	remote  Executor
	copier  Copier
	log     *slog.Logger
	cache   *script.Cache
	owner   string
	lease   time.Duration
	poll    time.Duration
	maxStep uint64
	short   time.Duration
	sender  string
	now     func() time.Time

	mu      sync.Mutex
	held    map[string]holder
	fanouts sync.Map // parent id -> *Fanout
	sources sync.Map // digest -> *job.Source; sources never change

	kick chan struct{} // wakes Serve
	// renewed is the lease expiry (unix nanoseconds) the last successful
	// renewal gave every job this engine holds.
	renewed atomic.Int64
	// lapses counts renewals that came after the previous lease had
	// already expired: the process was frozen or starved, and any job it
	// holds may have been taken by another engine meanwhile.
	lapses atomic.Int64
	// renewing is the renewal in flight, which callers that asked after
	// it started share (see renew).
	renewMu  sync.Mutex
	renewing *renewCall

	beatOnce sync.Once
	beatStop chan struct{}
	beatDone chan struct{}
}

// New returns an engine. Call Close when done.
func New(o Options) *Engine {
	e := &Engine{
		store: o.Store, local: o.Local, remote: o.Remote, copier: o.Copier,
		log: o.Logger, cache: script.NewCache(), lease: o.Lease, poll: o.Poll,
		maxStep: o.MaxSteps, short: o.ShortSleep, sender: o.Sender, now: o.Now,
		held: map[string]holder{}, kick: make(chan struct{}, 1), beatStop: make(chan struct{}), beatDone: make(chan struct{}),
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if e.lease <= 0 {
		e.lease = 30 * time.Second
	}
	if e.poll <= 0 {
		e.poll = time.Second
	}
	if e.poll > e.lease/3 {
		e.poll = e.lease / 3
	}
	if e.maxStep == 0 {
		e.maxStep = 100_000_000
	}
	if e.short <= 0 {
		e.short = 5 * time.Second
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.sender == "" {
		e.sender = defaultSender()
	}
	e.owner = ownerID()
	return e
}

// source returns a stored source, cached: a digest names one content.
func (e *Engine) source(ctx context.Context, digest string) (*job.Source, error) {
	if v, ok := e.sources.Load(digest); ok {
		return v.(*job.Source), nil
	}
	src, err := e.store.Source(ctx, digest)
	if err != nil {
		return nil, err
	}
	e.sources.Store(digest, src)
	return src, nil
}

// Owner is this engine's lease owner id.
func (e *Engine) Owner() string { return e.owner }

// Cache is the engine's compiled-program cache.
func (e *Engine) Cache() *script.Cache { return e.cache }

// Store is the engine's store.
func (e *Engine) Store() Store { return e.store }

// Close stops lease renewal. Jobs still held are left for their lease to
// expire, as after a crash; callers suspend them first for a clean stop.
func (e *Engine) Close() {
	e.beatOnce.Do(func() { close(e.beatDone) })
	select {
	case <-e.beatStop:
	default:
		close(e.beatStop)
	}
}

// startBeat renews the leases of held jobs and picks up operators'
// requests. It runs only while jobs are held.
func (e *Engine) startBeat() {
	e.beatOnce.Do(func() {
		go func() {
			defer close(e.beatDone)
			t := time.NewTicker(e.poll)
			defer t.Stop()
			for {
				select {
				case <-e.beatStop:
					return
				case <-t.C:
				}
				e.mu.Lock()
				n := len(e.held)
				e.mu.Unlock()
				if n == 0 {
					continue
				}
				reqs, err := e.renew()
				if err != nil {
					e.log.Warn("renewing job leases", "err", err)
					continue
				}
				for id, a := range reqs {
					e.mu.Lock()
					r := e.held[id]
					e.mu.Unlock()
					if r != nil {
						// The store keeps the requester's reason; an empty one
						// leaves it in place.
						r.request(a, "")
					}
				}
			}
		}()
	})
}

// holder is a job this engine holds: a run, or a parent driving its
// children.
type holder interface {
	request(a job.Action, reason string)
}

// renewCall is one renewal, shared by the callers that wait for it.
type renewCall struct {
	started time.Time // before it read the clock for the new lease
	done    chan struct{}
	reqs    map[string]job.Action
	err     error
}

// renew extends the leases of every job this engine holds. When leases
// run short every held run renews before its next step (ensureLease);
// callers share the renewal in flight instead of each writing one, as
// long as it started after they asked: one that started earlier may carry
// a lease computed before a freeze, so they wait for it and renew again.
func (e *Engine) renew() (map[string]job.Action, error) {
	asked := time.Now()
	for {
		e.renewMu.Lock()
		c := e.renewing
		if c == nil {
			c = &renewCall{started: time.Now(), done: make(chan struct{})}
			e.renewing = c
			e.renewMu.Unlock()
			c.reqs, c.err = e.renewNow()
			e.renewMu.Lock()
			e.renewing = nil
			e.renewMu.Unlock()
			close(c.done)
			return c.reqs, c.err
		}
		e.renewMu.Unlock()
		<-c.done
		if !c.started.Before(asked) {
			return c.reqs, c.err
		}
	}
}

// renewNow writes one renewal.
func (e *Engine) renewNow() (map[string]job.Action, error) {
	now := e.now()
	until := now.Add(e.lease)
	ctx, cancel := context.WithTimeout(context.Background(), e.lease/2)
	defer cancel()
	reqs, err := e.store.Renew(ctx, e.owner, until)
	if err == nil {
		if prev := e.renewed.Swap(until.UnixNano()); prev != 0 && now.UnixNano() > prev {
			e.lapses.Add(1)
		}
	}
	return reqs, err
}

// leased notes the lease a claim or a creation gave a job, so that a
// lapse is noticed even before the first renewal.
func (e *Engine) leased(until time.Time) {
	n := until.UnixNano()
	for {
		cur := e.renewed.Load()
		if cur >= n || e.renewed.CompareAndSwap(cur, n) {
			return
		}
	}
}

func (e *Engine) hold(r *run) { e.holdHandle(r.job.ID, r) }

func (e *Engine) holdHandle(id string, h holder) {
	e.mu.Lock()
	e.held[id] = h
	e.mu.Unlock()
	e.startBeat()
}

func (e *Engine) release(id string) {
	e.mu.Lock()
	delete(e.held, id)
	e.mu.Unlock()
}

// Request asks a job to suspend or stop. A job this engine holds is told
// directly; one another engine holds gets the request through the store;
// one nobody holds changes state at once.
func (e *Engine) Request(ctx context.Context, id string, a job.Action, reason string) (*job.Job, error) {
	e.mu.Lock()
	h := e.held[id]
	e.mu.Unlock()
	if h != nil {
		h.request(a, reason)
		return e.store.Job(ctx, id)
	}
	return e.store.Request(ctx, id, a, reason, e.now(), e.isHeld)
}

// StopAndWait asks a job to stop and waits, up to limit, until no live
// engine runs it any more. Removing a running job needs this: the stop
// request lives in the job's row, and removing the row at once would
// leave its holder running the remaining steps until its next commit
// finds the job gone. A holder that does not stop in time (a dead one is
// not waited for) is not an error.
func (e *Engine) StopAndWait(ctx context.Context, id, reason string, limit time.Duration) error {
	if _, err := e.Request(ctx, id, job.ActionStop, reason); err != nil {
		return err
	}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		j, err := e.store.Job(ctx, id)
		if err != nil || e.EffectiveState(j) != job.Running {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// isHeld reports whether j is held by a live engine.
func (e *Engine) isHeld(j *job.Job) bool {
	if j.Owner == "" {
		return false
	}
	// A script holds its job between blocks without renewing it; on its
	// own machine whether it still runs is known for certain.
	if isScriptHolder(j.Owner) && onThisHost(j.Owner) {
		return ownerAlive(j.Owner)
	}
	if !e.now().Before(j.LeaseUntil) {
		return false
	}
	return ownerAlive(j.Owner)
}

// IsHeld reports whether a live engine holds j.
func (e *Engine) IsHeld(j *job.Job) bool { return e.isHeld(j) }

// EffectiveState is j's state as users see it: a running job whose engine
// is gone (lease expired, or a dead process on this machine) is
// interrupted.
func (e *Engine) EffectiveState(j *job.Job) job.State {
	if j.State == job.Running && !e.isHeld(j) {
		return job.Interrupted
	}
	return j.State
}

// NewID returns a job id: sortable by creation time, short enough to type.
func NewID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	r := uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
	ms := strconv.FormatUint(uint64(now.UnixMilli()), 36)
	rs := strconv.FormatUint(r%2176782336, 36) // 36^6
	return ms + strings.Repeat("0", 6-len(rs)) + rs
}

// ownerID names this process: host, pid and the process's start time, so
// that another process on the same machine can tell a dead owner from a
// live one without waiting for the lease, even if the pid was reused.
func ownerID() string {
	host, _ := os.Hostname()
	pid := os.Getpid()
	var b [3]byte
	_, _ = rand.Read(b[:])
	// The random part tells apart engines of one process.
	return fmt.Sprintf("%s:%d:%s:%x", host, pid, procStart(pid), b)
}

// ownerAlive reports false only when the owner is certainly dead: a
// process of this machine that no longer exists or whose pid was reused.
func ownerAlive(owner string) bool {
	parts := strings.Split(owner, ":")
	if len(parts) < 3 {
		return true
	}
	host, _ := os.Hostname()
	if parts[0] != host {
		return true
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil {
		return true
	}
	start := procStart(pid)
	if start == "" {
		// No such process. Only trust that where /proc exists.
		if _, err := os.Stat("/proc/self/stat"); err == nil {
			return false
		}
		return true
	}
	return start == parts[2]
}

// procStart is field 22 of /proc/PID/stat: the process's start time in
// clock ticks since boot. Empty when unknown.
func procStart(pid int) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(data)
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

func defaultSender() string {
	u := os.Getenv("USER")
	if u == "" {
		if cur, err := user.Current(); err == nil {
			u = cur.Username
		} else {
			u = strconv.Itoa(os.Getuid())
		}
	}
	host, _ := os.Hostname()
	return u + "@" + host
}

// ErrUsage marks errors in what the user asked for (exit code 2).
var ErrUsage = errors.New("usage error")

// UsageError wraps err so that errors.Is(err, ErrUsage) holds.
func UsageError(err error) error { return &usageError{err} }

type usageError struct{ err error }

func (u *usageError) Error() string   { return u.err.Error() }
func (u *usageError) Unwrap() []error { return []error{u.err, ErrUsage} }
