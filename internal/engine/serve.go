package engine

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/drover/drover/internal/job"
)

// ServeOptions configure Serve.
type ServeOptions struct {
	// MaxRunning caps the jobs running at once (MaxRunningWorkflows); the
	// rest stay queued, already persisted, and start in submission order.
	// Default 64.
	MaxRunning int
	// Poll is how often the store is asked for due work when nothing
	// woke the loop sooner. Default 1s.
	Poll time.Duration
	// Observer sees every job this loop runs.
	Observer Observer
	// Ended is called when a job this loop ran stops running.
	Ended func(*job.Job)
	// TopLevel takes up only jobs without a parent: a child job is run by
	// its parent's drive, under the parent's throttle and failure limit.
	TopLevel bool
}

// Optional store capabilities Serve uses when the store has them.
type (
	// dueClaimer claims due jobs in one statement (FOR UPDATE SKIP
	// LOCKED), so that servers sharing a database do not race for the
	// same rows.
	dueClaimer interface {
		ClaimDue(ctx context.Context, owner string, until, now time.Time, limit int, topLevel bool) ([]*job.Job, error)
	}
	// listener wakes Serve when another process makes a job due.
	listener interface {
		Listen(ctx context.Context, fn func())
	}
	// reachability tells when the store last came back from an outage of
	// its database (zero if it saw none; now while one lasts).
	reachability interface {
		ReachableSince() time.Time
	}
)

// Serve runs due jobs until ctx ends: queued jobs, waiting jobs whose
// timer is due, and running jobs whose engine died. Waiting jobs hold no
// goroutine; Signal, Wake and timers bring them back.
func (e *Engine) Serve(ctx context.Context, o ServeOptions) error {
	if o.MaxRunning <= 0 {
		o.MaxRunning = 64
	}
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	if l, ok := e.store.(listener); ok {
		wg.Add(1)
		go func() { defer wg.Done(); l.Listen(ctx, e.Wake) }()
	}
	claimer, _ := e.store.(dueClaimer)
	running := map[string]bool{}
	var mu sync.Mutex
	freed := make(chan struct{}, 1)
	lastOrphanScan := time.Time{}
	for {
		if ctx.Err() != nil {
			return nil
		}
		mu.Lock()
		slots := o.MaxRunning - len(running)
		mu.Unlock()
		start := func(j *job.Job) {
			mu.Lock()
			running[j.ID] = true
			mu.Unlock()
			wg.Add(1)
			go func(j *job.Job) {
				defer wg.Done()
				var out *Outcome
				var err error
				if len(j.Spec) > 0 {
					var pj *job.Job
					pj, err = e.DriveParent(context.WithoutCancel(ctx), j, ChildFilter{}, o.Observer, ctx.Done())
					out = &Outcome{Job: pj}
				} else {
					out, err = e.Execute(context.WithoutCancel(ctx), j, o.Observer)
				}
				mu.Lock()
				delete(running, j.ID)
				mu.Unlock()
				select {
				case freed <- struct{}{}:
				default:
				}
				if err != nil {
					e.log.Error("running a job", "job", j.ID, "err", err)
					return
				}
				if o.Ended != nil && out.Job != nil {
					o.Ended(out.Job)
				}
			}(j)
		}
		if slots > 0 && claimer != nil {
			now := e.now()
			jobs, err := claimer.ClaimDue(ctx, e.owner, now.Add(e.lease), now, slots, o.TopLevel)
			if err != nil && ctx.Err() == nil {
				e.log.Warn("claiming due jobs", "err", err)
			}
			for _, j := range jobs {
				e.leased(j.LeaseUntil)
				start(j)
			}
			mu.Lock()
			slots = o.MaxRunning - len(running)
			mu.Unlock()
		}
		if slots > 0 {
			var ids []string
			if claimer == nil {
				var err error
				ids, err = e.store.Due(ctx, e.now(), slots+len(running))
				if err != nil && ctx.Err() == nil {
					e.log.Warn("listing due jobs", "err", err)
				}
			}
			if time.Since(lastOrphanScan) >= o.Poll*5 {
				lastOrphanScan = time.Now()
				ids = append(ids, e.orphans(ctx, o.TopLevel)...)
			}
			for _, id := range ids {
				mu.Lock()
				busy := running[id] || len(running) >= o.MaxRunning
				mu.Unlock()
				if busy {
					continue
				}
				j, err := e.Claim(ctx, id, []job.State{job.Queued, job.Waiting, job.Interrupted})
				if err != nil {
					if !errors.Is(err, job.ErrHeld) && !errors.Is(err, job.ErrWrongState) && ctx.Err() == nil {
						e.log.Warn("claiming a job", "job", id, "err", err)
					}
					continue
				}
				start(j)
			}
		}
		wait := o.Poll
		if next, err := e.store.NextWake(ctx); err == nil && !next.IsZero() {
			if d := next.Sub(e.now()); d < wait {
				wait = max(d, time.Millisecond)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-e.kick:
		case <-freed:
		case <-t.C:
		}
		t.Stop()
	}
}

// orphans lists running jobs whose engine is gone.
func (e *Engine) orphans(ctx context.Context, topLevel bool) []string {
	var ids []string
	if e.takeOverLapsed() {
		jobs, err := e.store.Jobs(ctx, job.Filter{States: []job.State{job.Interrupted}, Limit: 1000, TopLevel: topLevel}, e.now())
		if err != nil {
			return nil
		}
		for _, j := range jobs {
			// A script between blocks holds its job without renewing it.
			if !isScriptHolder(j.Owner) {
				ids = append(ids, j.ID)
			}
		}
	}
	// A dead process of this machine is known before its lease expires.
	live, err := e.store.Jobs(ctx, job.Filter{States: []job.State{job.Running}, Limit: 1000, TopLevel: topLevel}, e.now())
	if err == nil {
		for _, j := range live {
			if j.Owner != e.owner && !ownerAlive(j.Owner) && !isScriptHolder(j.Owner) {
				ids = append(ids, j.ID)
			}
		}
	}
	return ids
}

// takeOverLapsed reports whether jobs whose lease merely expired may be
// taken from their engine. Not until the database has been reachable for
// twice the lease since its last outage: while nobody could reach it, no
// holder could renew, and a holder that is alive renews within a poll of
// its return (its renewal keeps the job even after the lease lapsed).
// Taking its jobs meanwhile would run their steps in flight a second time.
func (e *Engine) takeOverLapsed() bool {
	r, ok := e.store.(reachability)
	return !ok || time.Since(r.ReachableSince()) >= 2*e.lease
}

// Wake makes Serve look for due work now, after a job was created or
// signalled in this process.
func (e *Engine) Wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}
