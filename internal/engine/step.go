package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.starlark.net/starlark"

	"github.com/drover/drover/internal/job"
)

// StepError is a step that failed after its retries.
type StepError struct {
	JobID    string
	Key      string
	Activity string
	Host     string
	Attempts int
	Err      error
}

func (e *StepError) Error() string { return e.UserMessage() }

// UserMessage is the message without Starlark positions: the script
// position comes from the call stack.
func (e *StepError) UserMessage() string {
	where := e.Activity
	if e.Host != "" {
		where += " on " + e.Host
	}
	att := ""
	if e.Attempts > 1 {
		att = fmt.Sprintf(" after %d attempts", e.Attempts)
	}
	return fmt.Sprintf("step %s (%s) failed%s: %v", e.Key, where, att, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// ReplayError is a replayed step that does not match its journal record.
type ReplayError struct {
	Key                string
	Want, Got          string // activities
	WantDigest, Digest string
	WantPos, Pos       string
}

func (e *ReplayError) Error() string { return e.UserMessage() }

// UserMessage names both sides of the mismatch.
func (e *ReplayError) UserMessage() string {
	return fmt.Sprintf("replay mismatch at step %s: the journal recorded %s (arguments %s) called at %s, "+
		"but the script now calls %s (arguments %s) at %s; the job's journal does not fit this source",
		e.Key, e.Want, e.WantDigest, e.WantPos, e.Got, e.Digest, e.Pos)
}

// errNotInMain is returned by activities called while modules load: that
// code runs again at every replay and at validation, so it must not act.
var errNotInMain = errors.New("activities can only be called from main() and the functions it calls, not while the module loads")

func digestOf(activity string, args any) string {
	data, _ := json.Marshal(args)
	h := sha256.New()
	h.Write([]byte(activity))
	h.Write([]byte{0})
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// stepFunc performs a step. It may set st.Host, st.Data and st.Attempts.
// Returning an *errHalt leaves the step pending with st.Data.
type stepFunc func(ctx context.Context, st *job.Step) (json.RawMessage, error)

// step runs one activity durably: replayed from the journal when the
// journal has its result, else run for real and recorded.
func (r *run) step(t *starlark.Thread, activity string, args any, host string, persistAfter bool,
	fn stepFunc, decode func(json.RawMessage) (starlark.Value, error)) (starlark.Value, error) {
	f := frameOf(t)
	if f == nil || r == nil {
		return nil, errNotInMain
	}
	key := f.nextKey()
	digest := digestOf(activity, args)
	pos := t.CallFrame(1).Pos.String()

	r.mu.Lock()
	rec := r.journal[key]
	if rec != nil && !r.seen[key] {
		// Records emitted before a journaled step (done, pending or
		// failed) were seen by the run that journaled it.
		r.seen[key] = true
		r.toReplay--
	}
	r.mu.Unlock()
	if rec != nil {
		if rec.Activity != activity || rec.Digest != digest {
			return nil, &ReplayError{Key: key, Want: rec.Activity, Got: activity,
				WantDigest: rec.Digest, Digest: digest, WantPos: rec.Position, Pos: pos}
		}
		if rec.Status == job.StepDone {
			r.obs.Step(StepEvent{JobID: r.job.ID, Key: key, Activity: activity, Host: rec.Host, Done: true, Replayed: true})
			return decode(rec.Result)
		}
	}
	if r.verifying {
		return nil, &errHalt{haltVerify}
	}
	if err := r.halted(); err != nil {
		return nil, err
	}
	if err := r.ensureLease(); err != nil {
		return nil, err
	}
	now := r.e.now()
	st := &job.Step{Key: key, Activity: activity, Digest: digest, Host: host, Engine: r.e.Owner(), Position: pos, Started: now}
	if rec != nil && rec.Status == job.StepPending {
		st.Data, st.Started, st.Attempts = rec.Data, rec.Started, rec.Attempts
	}
	// A step the journal holds as failed runs again from scratch.
	st.Status = ""
	if rec != nil && rec.Status == job.StepFailed {
		st.Status = job.StepFailed
	}
	r.obs.Step(StepEvent{JobID: r.job.ID, Key: key, Activity: activity, Host: host})
	res, err := fn(ctxOf(t, r), st)
	end := r.e.now()
	if err != nil {
		var h *errHalt
		if errors.As(err, &h) {
			st.Status = job.StepPending
			r.keep(st)
			r.obs.Step(StepEvent{JobID: r.job.ID, Key: key, Activity: activity, Host: st.Host, Done: true, Err: err, Duration: end.Sub(now)})
			return nil, err
		}
		if herr := r.haltedByCancel(); herr != nil {
			r.obs.Step(StepEvent{JobID: r.job.ID, Key: key, Activity: activity, Host: st.Host, Done: true, Err: err, Duration: end.Sub(now)})
			return nil, herr
		}
		st.Status = job.StepFailed
		st.Error = err.Error()
		st.Ended = end
		r.keep(st)
		serr := &StepError{JobID: r.job.ID, Key: key, Activity: activity, Host: st.Host, Attempts: st.Attempts, Err: err}
		r.obs.Step(StepEvent{JobID: r.job.ID, Key: key, Activity: activity, Host: st.Host, Done: true, Err: serr, Duration: end.Sub(now)})
		return nil, serr
	}
	st.Status = job.StepDone
	st.Result = res
	st.Data = nil
	st.Ended = end
	if st.Attempts == 0 {
		st.Attempts = 1
	}
	r.keep(st)
	r.obs.Step(StepEvent{JobID: r.job.ID, Key: key, Activity: activity, Host: st.Host, Done: true, Duration: end.Sub(now)})
	reason := "step"
	if persistAfter {
		reason = "checkpoint"
	}
	if err := r.checkpoint(reason); err != nil {
		return nil, fmt.Errorf("persisting step %s: %w", key, err)
	}
	return decode(res)
}

// ensureLease makes sure this engine still holds the job before a step
// runs for real. Renewals keep the lease well ahead of now; a process that
// was frozen (SIGSTOP, a stalled VM) past its lease may have lost the job
// to another engine, which may have committed this very step already. It
// renews at once and checks it is still the owner; if not, the run stops
// without running anything more.
func (r *run) ensureLease() error {
	valid := time.Unix(0, r.e.renewed.Load())
	if r.e.now().Add(r.e.lease/3).Before(valid) && r.e.lapses.Load() == r.lapsesSeen.Load() {
		return nil
	}
	if err := r.renewWaiting(); err != nil {
		return err
	}
	lapses := r.e.lapses.Load()
	cur, err := r.e.store.Job(context.WithoutCancel(r.ctx), r.job.ID)
	if err != nil {
		return fmt.Errorf("checking the job's lease before a step: %w", err)
	}
	if cur.Owner != r.e.owner {
		r.mu.Lock()
		r.halt = haltLost
		r.mu.Unlock()
		return &errHalt{haltLost}
	}
	r.lapsesSeen.Store(lapses)
	return nil
}

// renewWaitMax bounds how long a step waits for its lease to be renewed
// when the store cannot be reached.
const renewWaitMax = 15 * time.Minute

// renewWaiting renews the engine's leases before a step, waiting with
// backoff while the store is unreachable: a database restarting is no
// reason to fail the job, and the renewal, when the database is back,
// either keeps the job (the lease is this engine's until another takes
// it) or shows that another engine owns it now. It gives up when the job
// is halted (the server is stopping) or after renewWaitMax.
func (r *run) renewWaiting() error {
	start := time.Now()
	wait := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		_, err := r.e.renew()
		if err == nil {
			if attempt > 1 {
				r.e.log.Info("renewed the job's lease; its next step runs", "job", r.job.ID, "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		err = fmt.Errorf("renewing the job's lease before a step: %w", err)
		if time.Since(start) >= renewWaitMax {
			return err
		}
		if attempt == 1 {
			r.e.log.Warn("cannot renew the job's lease before its next step; waiting for the store and retrying", "job", r.job.ID, "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-r.haltCh:
			t.Stop()
			if herr := r.halted(); herr != nil {
				return herr
			}
			return err
		case <-r.ctx.Done():
			t.Stop()
			return err
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// keep records a step in the journal and queues it for the next flush.
func (r *run) keep(st *job.Step) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cp := *st
	r.journal[st.Key] = &cp
	r.pending = append(r.pending, cp)
	if st.Status == job.StepDone {
		r.done++
	}
}

// haltedByCancel turns a step error caused by a stop, an interrupt or the
// job timeout into the halt it stands for, so the job ends stopped or
// suspended rather than failed.
func (r *run) haltedByCancel() error {
	if r.ctx.Err() == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.halt != haltNone {
		return &errHalt{r.halt}
	}
	return nil
}

// setWait records what wakes the job. The calling thread unwinds; other
// branches go on until they end or wait too, and the job unloads when
// none is left running.
func (r *run) setWait(name string, wake time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if name != "" {
		r.waitFor[name] = true
	}
	if !wake.IsZero() && (r.wakeAt.IsZero() || wake.Before(r.wakeAt)) {
		r.wakeAt = wake
	}
}

func (r *run) setHalt(k haltKind, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.halt == haltNone || r.halt == haltWait {
		r.halt = k
		r.reason = reason
	}
	r.haltOnce.Do(func() { close(r.haltCh) })
}

const ctxKey = "drover.ctx"

// ctxOf is the context a thread's steps run under: a branch of a
// fail-fast parallel has its own, cancelled when a sibling fails.
func ctxOf(t *starlark.Thread, r *run) context.Context {
	if c, ok := t.Local(ctxKey).(context.Context); ok {
		return c
	}
	return r.ctx
}

// sleepCtx waits d, or until ctx ends or the job is asked to halt.
func (r *run) sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-r.haltCh:
		return r.halted()
	}
}

var _ sync.Locker = (*sync.Mutex)(nil)
