package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/client"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// backend is where the commands' jobs live: the store, through an engine
// in this process (local mode), or a drover server, through its API
// (client mode, --server). The commands present what either returns the
// same way.
type backend interface {
	listJobs(ctx context.Context, q jobsQuery) ([]api.Job, error)
	show(ctx context.Context, id string) (*api.Show, error)
	// getJob returns a job, or an exit error naming it unknown.
	getJob(ctx context.Context, id string) (*api.Job, error)
	// stream passes a job's records after a position to fn; with follow,
	// until the job stops running.
	stream(ctx context.Context, id string, s job.Stream, after int64, follow bool, fn func(job.Record) error) error
	act(ctx context.Context, id string, a job.Action, reason string) (*api.Job, error)
	remove(ctx context.Context, j *api.Job, force bool) error
	signal(ctx context.Context, id, name string, payload json.RawMessage) (*api.Job, error)
	addWorkflow(ctx context.Context, name string, src *job.Source) (*job.Workflow, error)
	workflows(ctx context.Context) ([]*job.Workflow, error)
	workflow(ctx context.Context, name string) (*api.Workflow, error)
	removeWorkflow(ctx context.Context, name string) error
	scheduleBackend
}

type jobsQuery struct {
	states []job.State
	all    bool
	limit  int
}

// backend returns the invocation's backend: the server when --server or
// DROVER_SERVER names one, else the store.
func (a *app) backend(ctx context.Context) (backend, error) {
	if c, err := a.client(); c != nil || err != nil {
		if err != nil {
			return nil, err
		}
		return &remoteBackend{a: a, c: c}, nil
	}
	eng, err := a.open(ctx)
	if err != nil {
		return nil, err
	}
	return &localBackend{a: a, eng: eng}, nil
}

// localBackend works on the store with an engine of this process.
type localBackend struct {
	a   *app
	eng *engine.Engine
}

func (b *localBackend) listJobs(ctx context.Context, q jobsQuery) ([]api.Job, error) {
	jobs, err := b.eng.Store().Jobs(ctx, job.Filter{States: api.StateQuery(q.states), TopLevel: !q.all, Limit: q.limit}, time.Now())
	if err != nil {
		return nil, err
	}
	views := make([]api.Job, 0, len(jobs))
	for _, j := range jobs {
		v := api.View(b.eng, j)
		if len(q.states) > 0 && !containsState(q.states, v.State) {
			continue
		}
		views = append(views, v)
	}
	return views, nil
}

func (b *localBackend) getJob(ctx context.Context, id string) (*api.Job, error) {
	j, err := b.a.getJob(ctx, id)
	if err != nil {
		return nil, err
	}
	v := api.View(b.eng, j)
	return &v, nil
}

func (b *localBackend) show(ctx context.Context, id string) (*api.Show, error) {
	j, err := b.a.getJob(ctx, id)
	if err != nil {
		return nil, err
	}
	return api.BuildShow(ctx, b.eng, j)
}

// stream polls the store; with follow, until the job is no longer
// running or queued and everything written was read.
func (b *localBackend) stream(ctx context.Context, id string, s job.Stream, after int64, follow bool, fn func(job.Record) error) error {
	st := b.eng.Store()
	for {
		recs, err := st.Records(ctx, id, s, after, 1000)
		if err != nil {
			return err
		}
		for _, r := range recs {
			after = r.Seq
			if err := fn(r); err != nil {
				return err
			}
		}
		if len(recs) == 1000 {
			continue
		}
		if !follow {
			return nil
		}
		j, err := st.Job(ctx, id)
		if err != nil {
			return err
		}
		if state := b.eng.EffectiveState(j); state != job.Running && state != job.Queued {
			// One more read: records flushed with the final state.
			recs, err := st.Records(ctx, id, s, after, 1000)
			if err != nil {
				return err
			}
			if len(recs) == 0 {
				return nil
			}
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (b *localBackend) act(ctx context.Context, id string, a job.Action, reason string) (*api.Job, error) {
	j, err := b.eng.Request(ctx, id, a, reason)
	if err != nil {
		return nil, err
	}
	v := api.View(b.eng, j)
	return &v, nil
}

func (b *localBackend) remove(ctx context.Context, j *api.Job, force bool) error {
	if j.State == job.Running {
		if !force {
			return fmt.Errorf("job %s is running; stop it first (drover stop %s) or use --force", j.ID, j.ID)
		}
		if err := b.eng.StopAndWait(ctx, j.ID, "removed", 10*time.Second); err != nil {
			return fmt.Errorf("job %s: %w", j.ID, err)
		}
	}
	if err := b.eng.Store().DeleteJob(ctx, j.ID); err != nil {
		return fmt.Errorf("job %s: %w", j.ID, err)
	}
	return nil
}

func (b *localBackend) signal(ctx context.Context, id, name string, payload json.RawMessage) (*api.Job, error) {
	j, err := b.eng.Signal(ctx, id, name, payload, "")
	if err != nil {
		return nil, err
	}
	v := api.View(b.eng, j)
	return &v, nil
}

func (b *localBackend) addWorkflow(ctx context.Context, name string, src *job.Source) (*job.Workflow, error) {
	if _, err := b.eng.Signature(src); err != nil {
		return nil, exitCode(ExitUsage, err)
	}
	return b.eng.Store().PutWorkflow(ctx, name, src, time.Now())
}

func (b *localBackend) workflows(ctx context.Context) ([]*job.Workflow, error) {
	return b.eng.Store().Workflows(ctx)
}

func (b *localBackend) workflow(ctx context.Context, name string) (*api.Workflow, error) {
	wf, err := b.eng.Store().Workflow(ctx, name)
	if err != nil {
		return nil, exitCode(ExitFailed, err)
	}
	src, err := b.eng.Store().Source(ctx, wf.Digest)
	if err != nil {
		return nil, err
	}
	sig, err := b.eng.Signature(src)
	if err != nil {
		return nil, err
	}
	return &api.Workflow{Workflow: wf, Signature: sig.String(), Files: src.Files}, nil
}

func (b *localBackend) removeWorkflow(ctx context.Context, name string) error {
	if err := b.eng.Store().DeleteWorkflow(ctx, name); err != nil {
		return exitCode(ExitFailed, err)
	}
	return nil
}

// remoteBackend works through a drover server's API.
type remoteBackend struct {
	a *app
	c *client.Client
}

// refused turns the server's refusals into the exit codes of local mode:
// a request the server found malformed (a script that fails validation,
// a bad parameter) is a usage error; any other refusal a failure.
func refused(err error) error {
	var ce *client.Error
	if errors.As(err, &ce) {
		if ce.Status == http.StatusBadRequest {
			return exitCode(ExitUsage, errors.New(ce.Message))
		}
		return exitCode(ExitFailed, errors.New(ce.Message))
	}
	return err
}

func (b *remoteBackend) notFound(id string) error {
	return exitCode(ExitFailed, fmt.Errorf("no job %q on the server %s (see drover jobs)", id, b.c.URL()))
}

func (b *remoteBackend) listJobs(ctx context.Context, q jobsQuery) ([]api.Job, error) {
	var out []api.Job
	after := ""
	for {
		limit := 0
		if q.limit > 0 {
			limit = q.limit - len(out)
		}
		page, err := b.c.Jobs(ctx, client.JobsQuery{States: q.states, All: q.all, Limit: limit, After: after})
		if err != nil {
			return nil, refused(err)
		}
		out = append(out, page.Jobs...)
		if page.Next == "" || (q.limit > 0 && len(out) >= q.limit) {
			return out, nil
		}
		after = page.Next
	}
}

func (b *remoteBackend) show(ctx context.Context, id string) (*api.Show, error) {
	v, err := b.c.Job(ctx, id)
	if errors.Is(err, job.ErrNotFound) {
		return nil, b.notFound(id)
	}
	if err != nil {
		return nil, refused(err)
	}
	return v, nil
}

func (b *remoteBackend) getJob(ctx context.Context, id string) (*api.Job, error) {
	v, err := b.show(ctx, id)
	if err != nil {
		return nil, err
	}
	return &v.Job, nil
}

func (b *remoteBackend) stream(ctx context.Context, id string, s job.Stream, after int64, follow bool, fn func(job.Record) error) error {
	if !follow {
		for {
			page, err := b.c.Records(ctx, id, s, after, 1000)
			if err != nil {
				return refused(err)
			}
			for _, r := range page.Records {
				if err := fn(r); err != nil {
					return err
				}
			}
			if len(page.Records) < 1000 {
				return nil
			}
			after = page.Next
		}
	}
	name := api.StreamOutput
	if s == job.Log {
		name = api.StreamLog
	}
	no := false
	_, err := b.c.Follow(ctx, id, client.FollowOptions{Streams: []string{name}, After: after, Family: &no, Retry: b.a.reconnecting()},
		func(ev client.Event) error {
			if ev.Record != nil {
				return fn(*ev.Record)
			}
			return nil
		})
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return refused(err)
}

func (b *remoteBackend) act(ctx context.Context, id string, a job.Action, reason string) (*api.Job, error) {
	v, err := b.c.Act(ctx, id, a, api.Action{})
	if err != nil {
		return nil, refusedNoPrefix(err)
	}
	return v, nil
}

// refusedNoPrefix is a refusal the command prints after the job's id
// itself.
func refusedNoPrefix(err error) error {
	var ce *client.Error
	if errors.As(err, &ce) {
		return errors.New(ce.Message)
	}
	return err
}

func (b *remoteBackend) remove(ctx context.Context, j *api.Job, force bool) error {
	return refusedNoPrefix(b.c.Remove(ctx, j.ID, force))
}

func (b *remoteBackend) signal(ctx context.Context, id, name string, payload json.RawMessage) (*api.Job, error) {
	v, err := b.c.Signal(ctx, id, name, payload)
	if err != nil {
		if client.IsStatus(err, http.StatusConflict) {
			return nil, exitCode(ExitFailed, refusedNoPrefix(err))
		}
		return nil, refused(err)
	}
	return v, nil
}

func (b *remoteBackend) addWorkflow(ctx context.Context, name string, src *job.Source) (*job.Workflow, error) {
	wf, err := b.c.AddWorkflow(ctx, name, src)
	return wf, refused(err)
}

func (b *remoteBackend) workflows(ctx context.Context) ([]*job.Workflow, error) {
	wfs, err := b.c.Workflows(ctx)
	return wfs, refused(err)
}

func (b *remoteBackend) workflow(ctx context.Context, name string) (*api.Workflow, error) {
	wf, err := b.c.Workflow(ctx, name)
	return wf, refused(err)
}

func (b *remoteBackend) removeWorkflow(ctx context.Context, name string) error {
	return refused(b.c.RemoveWorkflow(ctx, name))
}
