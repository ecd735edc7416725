package engine

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/drover/drover/internal/job"
)

// Drive runs a job this engine holds until it stops needing this process:
// it ends, suspends, or waits for a signal. A job that unloads only to
// sleep is woken when its timer is due and run again here, so a
// foreground run sleeps through sleep("30s") like a script would. Closing
// detach returns as soon as the job is unloaded.
func (e *Engine) Drive(ctx context.Context, j *job.Job, obs Observer, detach <-chan struct{}) (*job.Job, error) {
	for {
		out, err := e.Execute(ctx, j, obs)
		if err != nil {
			return nil, err
		}
		if out.LeaseLost {
			cur, err := e.store.Job(context.WithoutCancel(ctx), j.ID)
			if errors.Is(err, job.ErrNotFound) {
				gone := *j
				gone.State, gone.Reason = job.Stopped, "removed while it ran (drover rm --force)"
				return &gone, nil
			}
			return cur, err
		}
		j = out.Job
		if j.State != job.Waiting || len(j.WaitFor) > 0 || j.WakeAt.IsZero() {
			return j, nil
		}
		if d := j.WakeAt.Sub(e.now()); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return j, nil
			case <-detach:
				t.Stop()
				return j, nil
			}
		}
		nj, err := e.Claim(ctx, j.ID, []job.State{job.Waiting, job.Queued})
		if err != nil {
			if errors.Is(err, job.ErrHeld) || errors.Is(err, job.ErrWrongState) {
				// Another engine took it up, or an operator changed it.
				return e.store.Job(context.WithoutCancel(ctx), j.ID)
			}
			return nil, err
		}
		j = nj
	}
}

// Result is how one job of a batch ended.
type Result struct {
	ID  string
	Job *job.Job
	Err error
}

// DriveAll claims and drives many jobs, at most concurrency at once, and
// reports each as it ends.
func (e *Engine) DriveAll(ctx context.Context, ids []string, states []job.State, concurrency int, obs Observer, detach <-chan struct{}, report func(Result)) {
	if concurrency <= 0 {
		concurrency = 64
	}
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, id := range ids {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			defer func() { <-sem }()
			j, err := e.Claim(ctx, id, states)
			if err == nil {
				j, err = e.Drive(ctx, j, obs, detach)
			}
			mu.Lock()
			report(Result{ID: id, Job: j, Err: err})
			mu.Unlock()
		}(id)
	}
	wg.Wait()
}

// Held lists the ids of the jobs this engine holds now.
func (e *Engine) Held() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids := make([]string, 0, len(e.held))
	for id := range e.held {
		ids = append(ids, id)
	}
	return ids
}
