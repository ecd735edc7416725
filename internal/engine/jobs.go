package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.starlark.net/starlark"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/script"
)

// Spec describes a job to create.
type Spec struct {
	Source   *job.Source // the workflow's code; or
	Workflow string      // a registered workflow's name
	Path     string      // the file Source was read from, for resume --upgrade
	Input    json.RawMessage
	Params   []string // key=value pairs, as given to -p
	Name     string
	Persist  job.Persist
	OnError  job.OnError
	Timeout  time.Duration
	ParentID string
	Target   string
	Vars     json.RawMessage
	Spec     json.RawMessage
}

// Prepared is a validated job ready to be stored.
type Prepared struct {
	Job    *job.Job
	Source *job.Source
}

// Prepare validates a spec: it compiles the workflow (once per digest),
// loads its modules, finds main and binds the parameters. Errors in the
// user's request wrap ErrUsage.
func (e *Engine) Prepare(ctx context.Context, s Spec) (*Prepared, error) {
	src := s.Source
	wfName := s.Workflow
	if src == nil {
		if s.Workflow == "" {
			return nil, UsageError(errors.New("no workflow given"))
		}
		wf, err := e.store.Workflow(ctx, s.Workflow)
		if err != nil {
			if errors.Is(err, job.ErrNotFound) {
				return nil, UsageError(fmt.Errorf("no workflow named %q (see drover workflow list)", s.Workflow))
			}
			return nil, err
		}
		src, err = e.store.Source(ctx, wf.Digest)
		if err != nil {
			return nil, fmt.Errorf("workflow %s: %w", wf.Name, err)
		}
	}
	sig, err := e.Signature(src)
	if err != nil {
		return nil, UsageError(err)
	}
	input, err := sig.Bind(s.Input, s.Params)
	if err != nil {
		return nil, UsageError(err)
	}
	persist, err := job.ParsePersist(string(s.Persist))
	if err != nil {
		return nil, UsageError(err)
	}
	onErr, err := job.ParseOnError(string(s.OnError))
	if err != nil {
		return nil, UsageError(err)
	}
	if s.Timeout < 0 {
		return nil, UsageError(fmt.Errorf("--timeout must be positive, got %s", s.Timeout))
	}
	now := e.now()
	j := &job.Job{
		ID: NewID(now), Name: s.Name, Workflow: wfName, Path: s.Path, Digest: src.Digest,
		Input: input, State: job.Queued, Persist: persist, OnError: onErr, Timeout: s.Timeout,
		ParentID: s.ParentID, Target: s.Target, Vars: s.Vars, Spec: s.Spec,
		Created: now, Updated: now,
	}
	if j.Name == "" {
		j.Name = wfName
		if j.Name == "" {
			j.Name = src.Entry
		}
	}
	return &Prepared{Job: j, Source: src}, nil
}

// Signature compiles src (cached) and returns main's parameters.
func (e *Engine) Signature(src *job.Source) (script.Signature, error) {
	prog, err := e.cache.Program(src)
	if err != nil {
		return script.Signature{}, err
	}
	thread := &starlark.Thread{Name: "load"}
	thread.SetMaxExecutionSteps(e.maxStep)
	globals, err := prog.Init(thread, e.predeclared(nil))
	if err != nil {
		return script.Signature{}, script.FromEval(err)
	}
	fn, err := script.Main(globals, src.Entry)
	if err != nil {
		return script.Signature{}, err
	}
	return script.SignatureOf(fn), nil
}

// Create stores prepared jobs. With claim, they are created running and
// held by this engine, ready for Execute without another write.
func (e *Engine) Create(ctx context.Context, src *job.Source, claim bool, jobs ...*job.Job) error {
	if claim {
		now := e.now()
		for _, j := range jobs {
			j.State = job.Running
			j.Owner = e.owner
			j.LeaseUntil = now.Add(e.lease)
			j.Started = now
			j.Runs = 1
		}
	}
	if err := e.store.CreateJobs(ctx, src, jobs...); err != nil {
		return err
	}
	e.sources.Store(src.Digest, src)
	if !claim {
		e.Wake()
	}
	return nil
}

// Resumable is where resume takes a job from.
var Resumable = []job.State{job.Queued, job.Suspended, job.Waiting, job.Interrupted, job.Failed, job.Stopped, job.Skipped}

// Claim takes a job for this engine if it is in one of the states and no
// live engine holds it.
func (e *Engine) Claim(ctx context.Context, id string, states []job.State) (*job.Job, error) {
	j, err := e.store.Job(ctx, id)
	if err != nil {
		return nil, err
	}
	steal := ""
	if j.Owner != "" && j.Owner != e.owner {
		if !ownerAlive(j.Owner) {
			steal = j.Owner
		} else if j.State == job.Running && e.isHeld(j) {
			return nil, fmt.Errorf("job %s is running in another engine (%s): %w", id, j.Owner, job.ErrHeld)
		}
	}
	return e.store.Claim(ctx, id, e.owner, e.now().Add(e.lease), steal, states)
}

// Signal delivers a signal to a waiting job.
func (e *Engine) Signal(ctx context.Context, id, name string, payload json.RawMessage, sender string) (*job.Job, error) {
	if sender == "" {
		sender = e.sender
	}
	if len(payload) == 0 {
		payload = json.RawMessage("null")
	}
	if !json.Valid(payload) {
		return nil, UsageError(fmt.Errorf("signal payload is not valid JSON: %s", payload))
	}
	j, err := e.store.Signal(ctx, &job.Signal{JobID: id, Name: name, Payload: payload, Sender: sender, Time: e.now()})
	if err == nil {
		e.Wake()
	}
	return j, err
}

// Upgrade moves a job to a new source after checking that its journal
// fits: every committed step replays to the same activity and arguments.
// It returns the first differing step otherwise and leaves the job as it
// was.
func (e *Engine) Upgrade(ctx context.Context, j *job.Job, src *job.Source) error {
	if src.Digest == j.Digest {
		return nil
	}
	if _, err := e.Signature(src); err != nil {
		return UsageError(err)
	}
	steps, err := e.store.Journal(ctx, j.ID)
	if err != nil {
		return err
	}
	if err := e.verifyReplay(ctx, j, src, steps); err != nil {
		return err
	}
	if err := e.store.CreateJobs(ctx, src); err != nil {
		return err
	}
	return e.store.Apply(ctx, &job.Update{JobID: j.ID, Owner: j.Owner, Digest: src.Digest})
}
