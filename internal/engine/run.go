package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.starlark.net/starlark"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/script"
)

// Observer sees a running job's events, for live presentation. Calls may
// come from several goroutines.
type Observer interface {
	Record(r job.Record)
	Step(ev StepEvent)
	Progress(jobID string, p job.Progress)
}

// StepEvent is a step starting or ending.
type StepEvent struct {
	JobID    string
	Key      string
	Activity string
	Host     string
	Done     bool // false: started
	Replayed bool
	Err      error
	Duration time.Duration
}

type haltKind int

const (
	haltNone    haltKind = iota
	haltSuspend          // suspend(), an operator, Ctrl-C, --on-error suspend
	haltWait             // wait() or a long sleep(): this thread unwinds until woken
	haltStop             // an operator's stop: cancel running steps
	haltTimeout          // the job-wide --timeout
	haltVerify           // resume --upgrade's dry replay reached the journal's end
	haltLost             // another engine took the job: stop, write nothing
)

// errHalt unwinds the script at a safe point.
type errHalt struct{ kind haltKind }

func (h *errHalt) Error() string { return "job halted" }

// run is one load of a job: from claim to the point it stops running.
type run struct {
	e    *Engine
	job  *job.Job
	prog *script.Program
	obs  Observer

	ctx    context.Context
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	journal  map[string]*job.Step
	pending  []job.Step
	records  []job.Record
	consume  []int64
	signals  []job.Signal
	progress *job.Progress
	halt     haltKind
	reason   string
	waitFor  map[string]bool
	wakeAt   time.Time
	changed  bool // progress or records to flush
	done     int  // steps completed in this run, replayed or not

	haltCh   chan struct{} // closed at the first halt, to end in-memory sleeps
	haltOnce sync.Once

	// toReplay counts journaled steps not replayed yet: while any remain,
	// records and progress are old news to observers (the store already
	// has them, keyed, and ignores the repeats).
	toReplay int
	seen     map[string]bool
	hosts    map[string]Host // remote hosts this run used, to clean up after

	lapsesSeen atomic.Int64 // the engine's lease lapses this run checked ownership after

	// moduleSeq numbers records made while modules load.
	moduleSeq int

	// verifying is resume --upgrade's dry replay: journaled steps replay,
	// the first step without a record halts, nothing is written.
	verifying bool
}

// frame is a Starlark thread's position in the job: the key prefix of its
// branch and how many steps it has taken.
type frame struct {
	prefix string
	n      int
	sub    int // records since the last step, for their keys
}

const frameKey = "drover.frame"

func frameOf(t *starlark.Thread) *frame {
	f, _ := t.Local(frameKey).(*frame)
	return f
}

func (f *frame) nextKey() string {
	f.n++
	f.sub = 0
	return f.prefix + strconv.Itoa(f.n)
}

func (f *frame) peekKey() string { return f.prefix + strconv.Itoa(f.n+1) }

func (f *frame) recordKey(kind string) string {
	f.sub++
	return f.prefix + strconv.Itoa(f.n) + "." + kind + strconv.Itoa(f.sub)
}

// Outcome is how a run ended.
type Outcome struct {
	Job *job.Job
	// LeaseLost: another engine took the job; this run's effects after
	// the loss were discarded.
	LeaseLost bool
}

// Execute runs a job this engine has claimed until it stops running:
// completed, failed, suspended, stopped, or unloaded to wait. The job's
// final record is returned.
func (e *Engine) Execute(ctx context.Context, j *job.Job, obs Observer) (*Outcome, error) {
	src, err := e.source(ctx, j.Digest)
	if err != nil {
		return nil, fmt.Errorf("job %s: loading its source: %w", j.ID, err)
	}
	if src.Entry == ScriptEntry {
		return e.refuseScript(ctx, j)
	}
	prog, err := e.cache.Program(src)
	if err != nil {
		return e.finishEarly(ctx, j, err)
	}
	// A job on its first run has no journal and no signals yet (a signal
	// needs a waiting job, which has run before): skip two reads.
	var steps []job.Step
	var sigs []job.Signal
	if j.Runs > 1 || j.Steps > 0 {
		if steps, err = e.store.Journal(ctx, j.ID); err != nil {
			return nil, fmt.Errorf("job %s: loading its journal: %w", j.ID, err)
		}
		if sigs, err = e.store.Signals(ctx, j.ID); err != nil {
			return nil, fmt.Errorf("job %s: loading its signals: %w", j.ID, err)
		}
	}
	r := e.newRun(j, prog, obs, sigs)
	e.leased(j.LeaseUntil)
	r.lapsesSeen.Store(e.lapses.Load())
	for i := range steps {
		s := steps[i]
		r.journal[s.Key] = &s
		r.toReplay++
	}
	r.ctx, r.cancel = context.WithCancelCause(ctx)
	defer r.cancel(nil)
	if j.Timeout > 0 {
		deadline := j.Created.Add(j.Timeout)
		tctx, tcancel := context.WithDeadline(r.ctx, deadline)
		defer tcancel()
		r.ctx = tctx
		if !e.now().Before(deadline) {
			r.request(job.ActionStop, "")
			r.mu.Lock()
			r.halt = haltTimeout
			r.mu.Unlock()
		}
		go func() {
			<-tctx.Done()
			if errors.Is(tctx.Err(), context.DeadlineExceeded) {
				r.mu.Lock()
				if r.halt == haltNone || r.halt == haltWait || r.halt == haltSuspend {
					r.halt = haltTimeout
				}
				r.mu.Unlock()
			}
		}()
	}
	e.hold(r)
	defer e.release(j.ID)

	stopFlusher := r.startFlusher()
	result, runErr := r.main()
	stopFlusher()
	return r.finish(ctx, result, runErr)
}

// refuseScript gives back a script job that an engine took up to run as
// a workflow (a server found it queued, or its drover resume died): only
// drover resume, on the store, runs a script again. It is left suspended,
// saying so.
func (e *Engine) refuseScript(ctx context.Context, j *job.Job) (*Outcome, error) {
	st := job.Suspended
	reason := "a script's job: continue it with drover resume " + j.ID + " (with --db) on a machine that has its script"
	err := e.store.Apply(ctx, &job.Update{JobID: j.ID, Owner: j.Owner, State: &st, Reason: &reason, Release: true, ClearRequest: true})
	if err != nil {
		return nil, err
	}
	j, err = e.store.Job(ctx, j.ID)
	return &Outcome{Job: j}, err
}

func (e *Engine) finishEarly(ctx context.Context, j *job.Job, cause error) (*Outcome, error) {
	msg := fmt.Sprintf("job %s: %v", j.ID, cause)
	now := e.now()
	st := job.Failed
	err := e.store.Apply(ctx, &job.Update{JobID: j.ID, Owner: j.Owner, State: &st, Error: &msg, Ended: &now, Release: true})
	if err != nil {
		return nil, err
	}
	j, err = e.store.Job(ctx, j.ID)
	return &Outcome{Job: j}, err
}

func (e *Engine) newRun(j *job.Job, prog *script.Program, obs Observer, sigs []job.Signal) *run {
	if obs == nil {
		obs = nopObserver{}
	}
	return &run{e: e, job: j, prog: prog, obs: obs, journal: map[string]*job.Step{}, signals: sigs,
		waitFor: map[string]bool{}, haltCh: make(chan struct{}), seen: map[string]bool{}, hosts: map[string]Host{}}
}

// verifyReplay replays steps with a new source without running anything:
// every journaled step the script reaches must match its record.
func (e *Engine) verifyReplay(ctx context.Context, j *job.Job, src *job.Source, steps []job.Step) error {
	prog, err := e.cache.Program(src)
	if err != nil {
		return UsageError(err)
	}
	r := e.newRun(j, prog, nil, nil)
	r.verifying = true
	for i := range steps {
		s := steps[i]
		r.journal[s.Key] = &s
	}
	r.ctx, r.cancel = context.WithCancelCause(ctx)
	defer r.cancel(nil)
	_, err = r.main()
	var h *errHalt
	if err == nil || errors.As(err, &h) {
		return nil
	}
	var re *ReplayError
	if errors.As(err, &re) {
		return fmt.Errorf("refusing to upgrade job %s: %w", j.ID, script.FromEval(err))
	}
	return fmt.Errorf("refusing to upgrade job %s: replaying its journal with the new source failed: %w", j.ID, script.FromEval(err))
}

// main loads the modules and calls main with the job's input.
func (r *run) main() (starlark.Value, error) {
	thread := r.newThread("main", "")
	globals, err := r.prog.Init(thread, r.e.predeclaredFor(r))
	if err != nil {
		return nil, err
	}
	fn, err := script.Main(globals, r.prog.Source.Entry)
	if err != nil {
		return nil, err
	}
	kwargs, err := script.Kwargs(r.job.Input)
	if err != nil {
		return nil, err
	}
	thread.SetLocal(frameKey, &frame{})
	return starlark.Call(thread, fn, nil, kwargs)
}

func (r *run) newThread(name, prefix string) *starlark.Thread {
	t := &starlark.Thread{
		Name: name,
		Print: func(t *starlark.Thread, msg string) {
			r.addRecord(t, job.Log, msg, nil, "")
		},
	}
	t.SetMaxExecutionSteps(r.e.maxStep)
	if prefix != "" {
		t.SetLocal(frameKey, &frame{prefix: prefix})
	}
	return t
}

// request asks the run to stop at its next safe point (suspend) or at
// once (stop).
func (r *run) request(a job.Action, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch a {
	case job.ActionSuspend:
		if r.halt == haltNone || r.halt == haltWait {
			r.halt = haltSuspend
			r.reason = reason
		}
		r.haltOnce.Do(func() { close(r.haltCh) })
	case job.ActionStop:
		if r.halt != haltTimeout {
			r.halt = haltStop
			r.reason = reason
		}
		r.haltOnce.Do(func() { close(r.haltCh) })
		r.cancel(errStopped)
	}
}

// Interrupt cancels the running steps of a job this engine holds, so that
// a suspension requested earlier takes effect now; the interrupted steps
// run again on resume.
func (e *Engine) Interrupt(id string) {
	e.mu.Lock()
	h := e.held[id]
	e.mu.Unlock()
	if r, ok := h.(*run); ok {
		r.cancel(errInterrupted)
	}
}

var (
	errStopped     = errors.New("stopped by an operator")
	errInterrupted = errors.New("interrupted: the step runs again when the job resumes")
)

// halted reports a pending halt, checked at every safe point.
func (r *run) halted() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.halt != haltNone {
		return &errHalt{r.halt}
	}
	return nil
}

func (r *run) addRecord(t *starlark.Thread, s job.Stream, text string, value json.RawMessage, host string) {
	f := frameOf(t)
	var key string
	if f != nil {
		key = f.recordKey(string(s[0]))
	} else {
		// Module-level code runs on the loading thread, the same way at
		// every replay: number its records in order.
		r.mu.Lock()
		r.moduleSeq++
		key = "m" + strconv.Itoa(r.moduleSeq)
		r.mu.Unlock()
	}
	rec := job.Record{JobID: r.job.ID, Stream: s, Key: key, Time: r.e.now(), Text: text, Value: value, Host: host}
	r.mu.Lock()
	r.records = append(r.records, rec)
	r.changed = true
	replaying := r.toReplay > 0
	r.mu.Unlock()
	if !replaying {
		r.obs.Record(rec)
	}
}

// startFlusher writes records and progress every quarter second, so that
// followers in other processes see them while the job runs, whatever the
// persistence policy of its journal.
func (r *run) startFlusher() func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				r.flushLive()
			}
		}
	}()
	return func() { close(done); <-stopped }
}

func (r *run) flushLive() {
	r.mu.Lock()
	if !r.changed {
		r.mu.Unlock()
		return
	}
	recs := r.records
	r.records = nil
	prog := r.progress
	r.progress = nil
	r.changed = false
	r.mu.Unlock()
	if len(recs) > 0 {
		if err := r.e.store.AppendRecords(r.ctx, recs); err != nil {
			r.e.log.Warn("writing job records", "job", r.job.ID, "err", err)
		}
	}
	if prog != nil {
		err := r.e.store.Apply(r.ctx, &job.Update{JobID: r.job.ID, Owner: r.job.Owner, Progress: prog})
		if err != nil && !errors.Is(err, context.Canceled) {
			r.e.log.Warn("writing job progress", "job", r.job.ID, "err", err)
		}
	}
}

// flush commits the journal records not yet written, with u's other
// changes, in one store transaction.
func (r *run) flush(ctx context.Context, u *job.Update) error {
	// Branches flush concurrently, each with its own records, so that the
	// store can commit them in one group.
	r.mu.Lock()
	u.JobID = r.job.ID
	u.Owner = r.job.Owner
	u.Steps = append(u.Steps, r.pending...)
	u.Records = append(u.Records, r.records...)
	u.Consume = append(u.Consume, r.consume...)
	if r.progress != nil && u.Progress == nil {
		u.Progress = r.progress
	}
	pending, records, consume, prog := r.pending, r.records, r.consume, r.progress
	r.pending, r.records, r.consume, r.progress = nil, nil, nil, nil
	r.changed = false
	r.mu.Unlock()
	err := r.e.store.Apply(ctx, u)
	if err != nil {
		// Put them back: a later flush may still succeed.
		r.mu.Lock()
		r.pending = append(pending, r.pending...)
		r.records = append(records, r.records...)
		r.consume = append(consume, r.consume...)
		if r.progress == nil {
			r.progress = prog
		}
		r.mu.Unlock()
	}
	return err
}

// checkpoint persists by the job's policy: reason is "step" after every
// step, "checkpoint" at an explicit checkpoint, wait or sleep.
func (r *run) checkpoint(reason string) error {
	switch r.job.Persist {
	case job.PersistNever:
		return nil
	case job.PersistCheckpoints:
		if reason == "step" {
			return nil
		}
	}
	return r.flush(context.WithoutCancel(r.ctx), &job.Update{})
}

// finish turns how main ended into the job's next state and commits it
// with everything not yet written.
func (r *run) finish(ctx context.Context, result starlark.Value, runErr error) (*Outcome, error) {
	e := r.e
	now := e.now()
	u := &job.Update{Release: true}
	r.mu.Lock()
	halt, reason := r.halt, r.reason
	waitFor := make([]string, 0, len(r.waitFor))
	for n := range r.waitFor {
		waitFor = append(waitFor, n)
	}
	wakeAt := r.wakeAt
	r.mu.Unlock()
	var hErr *errHalt
	isHalt := errors.As(runErr, &hErr)
	if halt == haltLost {
		e.log.Warn("job lease lost while frozen; another engine owns it now", "job", r.job.ID)
		return &Outcome{LeaseLost: true}, nil
	}
	var state job.State
	var errText string
	switch {
	case runErr == nil:
		state = job.Completed
		if result != nil && result != starlark.None {
			if raw, err := script.ToJSON(result); err == nil {
				u.Result = raw
			}
		}
	case halt == haltTimeout:
		state = job.Failed
		errText = fmt.Sprintf("job %s exceeded its --timeout of %s (created %s)", r.job.ID, r.job.Timeout, r.job.Created.Format(time.RFC3339))
	case halt == haltStop:
		state = job.Stopped
		if reason != "" {
			u.Reason = &reason
		}
	case isHalt && hErr.kind == haltSuspend, halt == haltSuspend:
		state = job.Suspended
		if reason != "" {
			u.Reason = &reason
		}
	case isHalt && hErr.kind == haltWait:
		state = job.Waiting
		u.WaitFor = &waitFor
		u.WakeAt = &wakeAt
		u.Reason = &reason
	default:
		var se *StepError
		if r.job.OnError == job.OnErrorSuspend && errors.As(runErr, &se) {
			state = job.Suspended
			msg := r.describe(runErr)
			reason = "a step failed (--on-error suspend): " + msg
			u.Reason = &reason
			u.Error = &msg
		} else {
			state = job.Failed
			errText = r.describe(runErr)
		}
	}
	if r.job.Timeout > 0 && state == job.Waiting {
		deadline := r.job.Created.Add(r.job.Timeout)
		if wakeAt.IsZero() || deadline.Before(wakeAt) {
			u.WakeAt = &deadline
		}
	}
	u.State = &state
	if errText != "" {
		u.Error = &errText
	} else if state == job.Completed {
		empty := ""
		u.Error = &empty
		u.Reason = &empty
	}
	if state.Ended() {
		u.Ended = &now
	}
	if state != job.Waiting {
		empty := []string{}
		zero := time.Time{}
		u.WaitFor = &empty
		u.WakeAt = &zero
	}
	u.ClearRequest = true
	// Step directories on the hosts are cleaned before the end is
	// committed, once every step result is: a crash in between leaves a
	// job that resumes, replays and cleans again, where cleaning after
	// the commit would leave the directories behind for good.
	forgot := false
	if state.Ended() && r.remoteHosts() {
		if err := r.flush(context.WithoutCancel(ctx), &job.Update{}); err == nil {
			r.forgetHosts(context.WithoutCancel(ctx))
			forgot = true
		}
	}
	if err := r.flush(context.WithoutCancel(ctx), u); err != nil {
		if errors.Is(err, job.ErrLeaseLost) {
			e.log.Warn("job lease lost; another engine owns it now", "job", r.job.ID)
			return &Outcome{LeaseLost: true}, nil
		}
		if errors.Is(err, job.ErrNotFound) {
			// drover rm --force removed it while it ran.
			gone := *r.job
			gone.State, gone.Reason, gone.Ended = job.Stopped, "removed while it ran (drover rm --force)", now
			return &Outcome{Job: &gone}, nil
		}
		return nil, fmt.Errorf("job %s: committing its %s state: %w", r.job.ID, state, err)
	}
	if state.Ended() && !forgot {
		r.forgetHosts(context.WithoutCancel(ctx))
	}
	j, err := e.store.Job(context.WithoutCancel(ctx), r.job.ID)
	if err != nil {
		return nil, err
	}
	return &Outcome{Job: j}, nil
}

// remoteHosts tells whether the job ran commands on hosts whose executor
// leaves state there.
func (r *run) remoteHosts() bool {
	if _, ok := r.e.remote.(Forgetter); !ok {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.hosts) > 0
}

// forgetHosts lets the remote executor clean what supervised commands of
// an ended job left on its hosts. It is best-effort: a host that cannot
// be reached keeps a small directory, which the next job's Forget or an
// operator removes.
func (r *run) forgetHosts(ctx context.Context) {
	f, ok := r.e.remote.(Forgetter)
	if !ok {
		return
	}
	r.mu.Lock()
	hosts := make([]Host, 0, len(r.hosts))
	for _, h := range r.hosts {
		hosts = append(hosts, h)
	}
	r.mu.Unlock()
	for _, h := range hosts {
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := f.Forget(fctx, h, r.job.ID); err != nil {
			r.e.log.Warn("cleaning a job's step directories", "job", r.job.ID, "host", h.Name, "err", err)
		}
		cancel()
	}
}

// describe formats an error for users: position, job, step, host, and the
// Starlark call stack.
func (r *run) describe(err error) string {
	err = script.FromEval(err)
	return fmt.Sprintf("job %s: %v", r.job.ID, err)
}

type nopObserver struct{}

func (nopObserver) Record(job.Record)             {}
func (nopObserver) Step(StepEvent)                {}
func (nopObserver) Progress(string, job.Progress) {}
