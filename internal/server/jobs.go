package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

const (
	defaultPage = 500
	maxPage     = 5000
)

// jobFor reads a job the user may see. A job the user may not see is
// reported exactly as one that does not exist.
func (s *Server) jobFor(ctx context.Context, u user, id string) (*job.Job, *httpError) {
	j, err := s.st.Job(ctx, id)
	if errors.Is(err, job.ErrNotFound) || (err == nil && !u.sees(j)) {
		return nil, notFound("no job %q", id)
	}
	if err != nil {
		return nil, fromErr(err)
	}
	return j, nil
}

// jobToChange reads a job the user may change.
func (s *Server) jobToChange(ctx context.Context, u user, id string) (*job.Job, *httpError) {
	j, he := s.jobFor(ctx, u, id)
	if he != nil {
		return nil, he
	}
	if !u.actsOn(j) {
		return nil, forbidden("%s is a %s and may not change job %s", u.name, u.role, id)
	}
	return j, nil
}

func (s *Server) view(j *job.Job) api.Job { return api.View(s.eng, j) }

func parseStates(v string) ([]job.State, *httpError) {
	if v == "" {
		return nil, nil
	}
	var out []job.State
	for _, p := range strings.Split(v, ",") {
		st, err := job.ParseState(strings.TrimSpace(p))
		if err != nil {
			return nil, badRequest("state: %v", err)
		}
		out = append(out, st)
	}
	return out, nil
}

func boolParam(r *http.Request, name string) (bool, *httpError) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, badRequest("%s: want true or false, got %q", name, v)
	}
	return b, nil
}

func intParam(r *http.Request, name string, def, lo, hi int64) (int64, *httpError) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, badRequest("%s: want a whole number from %d to %d, got %q", name, lo, hi, v)
	}
	return n, nil
}

// listJobs is GET /jobs: top-level jobs (all=true: children too; parent=ID:
// a job's children), oldest first, in pages.
func (s *Server) listJobs(w http.ResponseWriter, r *http.Request, u user) *httpError {
	q := r.URL.Query()
	states, he := parseStates(q.Get("state"))
	if he != nil {
		return he
	}
	all, he := boolParam(r, "all")
	if he != nil {
		return he
	}
	limit, he := intParam(r, "limit", defaultPage, 1, maxPage)
	if he != nil {
		return he
	}
	parent := q.Get("parent")
	f := job.Filter{States: api.StateQuery(states), TopLevel: !all && parent == "", ParentID: parent,
		Limit: int(limit), AfterID: q.Get("after")}
	if !u.role.SeesAll() {
		f.CreatedBy = u.name
	}
	jobs, err := s.st.Jobs(r.Context(), f, time.Now())
	if err != nil {
		return fromErr(err)
	}
	out := api.JobList{Jobs: make([]api.Job, 0, len(jobs))}
	for _, j := range jobs {
		v := s.view(j)
		if len(states) > 0 && !containsState(states, v.State) {
			continue
		}
		out.Jobs = append(out.Jobs, v)
	}
	if len(jobs) == int(limit) {
		out.Next = jobs[len(jobs)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func containsState(states []job.State, s job.State) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}

// createJob is POST /jobs: the job is stored queued and the loop starts
// it in submission order.
func (s *Server) createJob(w http.ResponseWriter, r *http.Request, u user) *httpError {
	var req api.CreateJob
	if he := decode(w, r, &req, s.o.MaxBody, false); he != nil {
		return he
	}
	if s.draining.Load() {
		return errorf(http.StatusServiceUnavailable, "unavailable", "the server is shutting down; retry on the next one")
	}
	ctx := r.Context()
	prep, children, err := api.Prepare(ctx, s.eng, &req)
	if err != nil {
		return fromErr(err)
	}
	prep.Job.CreatedBy = u.name
	jobs := []*job.Job{prep.Job}
	for _, c := range children {
		c.CreatedBy = u.name
		jobs = append(jobs, c)
	}
	if err := s.eng.Create(ctx, prep.Source, false, jobs...); err != nil {
		return fromErr(fmt.Errorf("creating the job: %w", err))
	}
	s.metrics.submitted.Inc()
	s.log.Info("job created", "job", prep.Job.ID, "name", prep.Job.Name, "user", u.name, "children", len(children))
	w.Header().Set("Location", api.Prefix+"/jobs/"+prep.Job.ID)
	writeJSON(w, http.StatusCreated, api.Created{Job: s.view(prep.Job), Children: len(children)})
	return nil
}

// getJob is GET /jobs/{id}: what drover show prints.
func (s *Server) getJob(w http.ResponseWriter, r *http.Request, u user) *httpError {
	j, he := s.jobFor(r.Context(), u, r.PathValue("id"))
	if he != nil {
		return he
	}
	v, err := api.BuildShow(r.Context(), s.eng, j)
	if err != nil {
		return fromErr(err)
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// removeJob is DELETE /jobs/{id}[?force=true].
func (s *Server) removeJob(w http.ResponseWriter, r *http.Request, u user) *httpError {
	ctx := r.Context()
	id := r.PathValue("id")
	force, he := boolParam(r, "force")
	if he != nil {
		return he
	}
	j, he := s.jobToChange(ctx, u, id)
	if he != nil {
		return he
	}
	if s.eng.EffectiveState(j) == job.Running {
		if !force {
			return conflict("job %s is running; stop it first (drover stop %s) or use --force", id, id)
		}
		if err := s.eng.StopAndWait(ctx, id, "removed by "+u.name, 10*time.Second); err != nil {
			return fromErr(err)
		}
	}
	if err := s.st.DeleteJob(ctx, id); err != nil {
		return fromErr(err)
	}
	s.log.Info("job removed", "job", id, "user", u.name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) suspendJob(w http.ResponseWriter, r *http.Request, u user) *httpError {
	return s.act(w, r, u, job.ActionSuspend)
}

func (s *Server) stopJob(w http.ResponseWriter, r *http.Request, u user) *httpError {
	return s.act(w, r, u, job.ActionStop)
}

// act is POST /jobs/{id}/suspend and /stop. A running job acts at its
// next safe point (stop cancels its running steps); the answer is the job
// as it is now.
func (s *Server) act(w http.ResponseWriter, r *http.Request, u user, a job.Action) *httpError {
	var body api.Action
	if he := decode(w, r, &body, 64<<10, true); he != nil {
		return he
	}
	ctx := r.Context()
	id := r.PathValue("id")
	if _, he := s.jobToChange(ctx, u, id); he != nil {
		return he
	}
	reason := body.Reason
	if reason == "" {
		reason = fmt.Sprintf("%s requested by %s", a, u.name)
	}
	j, err := s.eng.Request(ctx, id, a, reason)
	if err != nil {
		return fromErr(err)
	}
	if body.Interrupt && a == job.ActionSuspend {
		s.eng.Interrupt(id)
	}
	s.log.Info("job "+string(a)+" requested", "job", id, "user", u.name)
	writeJSON(w, http.StatusOK, s.view(j))
	return nil
}

// resumeJob is POST /jobs/{id}/resume: the job is queued and the loop
// continues it from its last persisted point.
func (s *Server) resumeJob(w http.ResponseWriter, r *http.Request, u user) *httpError {
	var body api.Resume
	if he := decode(w, r, &body, s.o.MaxBody, true); he != nil {
		return he
	}
	if s.draining.Load() {
		return errorf(http.StatusServiceUnavailable, "unavailable", "the server is shutting down; retry on the next one")
	}
	ctx := r.Context()
	id := r.PathValue("id")
	j, he := s.jobToChange(ctx, u, id)
	if he != nil {
		return he
	}
	if j.ParentID != "" {
		return badRequest("job %s is a child of job %s; resume the parent (with hosts to narrow it)", id, j.ParentID)
	}
	if sc, err := s.eng.ScriptOf(ctx, j); err != nil {
		return fromErr(err)
	} else if sc != nil {
		return conflict("job %s is a script's job (drover step): a server does not run scripts; resume it with drover resume %s on the store (--db, without --server) on a machine that has its script", id, id)
	}
	state := s.eng.EffectiveState(j)
	switch {
	case state == job.Completed:
		return conflict("job %s already completed; there is nothing to resume", id)
	case state == job.Running:
		return conflict("job %s is running (%s); it is not resumed twice", id, j.Owner)
	case state == job.Waiting && len(j.WaitFor) > 0 && (j.WakeAt.IsZero() || time.Now().Before(j.WakeAt)):
		return conflict("job %s is waiting for signal %s; send it first (drover signal %s %s '{...}')", id, strings.Join(j.WaitFor, ", "), id, j.WaitFor[0])
	}
	if len(body.Hosts) > 0 && len(j.Spec) == 0 {
		return badRequest("--hosts applies to parent jobs (run with --targets or --inventory); %s is not one", id)
	}
	pos, err := s.hub.lastSeq(ctx, j.ID, len(j.Spec) > 0)
	if err != nil {
		return fromErr(err)
	}
	note := ""
	if body.Upgrade {
		n, he := s.upgrade(ctx, j, body.Source)
		if he != nil {
			return he
		}
		note = n
	}
	if len(body.Hosts) > 0 {
		j, err = s.driveHosts(ctx, j, body.Hosts)
	} else {
		j, err = s.queue(ctx, j)
	}
	if err != nil {
		return fromErr(err)
	}
	s.log.Info("job resumed", "job", id, "user", u.name)
	writeJSON(w, http.StatusOK, api.Resumed{Job: s.view(j), Note: note, Position: pos})
	return nil
}

// queue makes a job nobody runs queued, for the loop to take up.
func (s *Server) queue(ctx context.Context, j *job.Job) (*job.Job, error) {
	var err error
	if j.State == job.Queued {
		s.eng.Wake()
		return j, nil
	}
	if s.eng.EffectiveState(j) == job.Interrupted {
		// Its engine died: take the lease (the engine knows a dead owner
		// of this machine before its lease expires) and let it go queued.
		cj, err := s.eng.Claim(ctx, j.ID, engine.Resumable)
		if err != nil {
			return nil, err
		}
		st := job.Queued
		if err := s.st.Apply(ctx, &job.Update{JobID: cj.ID, Owner: cj.Owner, State: &st, Release: true, ClearRequest: true}); err != nil {
			return nil, err
		}
	} else if _, err = s.st.SetState(ctx, j.ID, []job.State{j.State}, job.Queued, time.Now()); err != nil {
		return nil, err
	}
	s.eng.Wake()
	return s.st.Job(ctx, j.ID)
}

// driveHosts reruns only some hosts' children of a parent, in a drive of
// its own beside the loop.
func (s *Server) driveHosts(ctx context.Context, parent *job.Job, hosts []string) (*job.Job, error) {
	children, err := s.st.Jobs(ctx, job.Filter{ParentID: parent.ID}, time.Now())
	if err != nil {
		return nil, err
	}
	known := map[string]bool{}
	for _, c := range children {
		known[c.Target] = true
	}
	for _, h := range hosts {
		if !known[h] {
			return nil, engine.UsageError(fmt.Errorf("--hosts: %s is not a host of job %s", h, parent.ID))
		}
	}
	pj, err := s.eng.Claim(ctx, parent.ID, engine.Resumable)
	if err != nil {
		return nil, err
	}
	s.side.Add(1)
	go func() {
		defer s.side.Done()
		out, err := s.eng.DriveParent(context.Background(), pj, engine.ChildFilter{Hosts: hosts}, &observer{s: s}, s.drainCh)
		if err != nil {
			s.log.Error("running a job's hosts again", "job", pj.ID, "err", err)
			return
		}
		s.ended(out)
	}()
	return pj, nil
}

// upgrade moves a job to the current version of its workflow: the
// registered one, or the source the client read again from the job's
// file. It refuses, naming the first differing step, when the journal
// does not fit.
func (s *Server) upgrade(ctx context.Context, j *job.Job, sent *job.Source) (string, *httpError) {
	var src *job.Source
	switch {
	case j.Workflow != "":
		wf, err := s.st.Workflow(ctx, j.Workflow)
		if err != nil {
			return "", fromErr(fmt.Errorf("job %s: workflow %s: %w", j.ID, j.Workflow, err))
		}
		if src, err = s.st.Source(ctx, wf.Digest); err != nil {
			return "", fromErr(err)
		}
	case sent != nil:
		var err error
		if src, err = api.CheckSource(sent); err != nil {
			return "", badRequest("%v", err)
		}
	default:
		return "", badRequest("job %s has no registered workflow; send the new source to upgrade it", j.ID)
	}
	if src.Digest == j.Digest {
		return fmt.Sprintf("job %s already runs the current version", j.ID), nil
	}
	prev := s.eng.EffectiveState(j)
	cj, err := s.eng.Claim(ctx, j.ID, engine.Resumable)
	if err != nil {
		return "", fromErr(fmt.Errorf("job %s: %w", j.ID, err))
	}
	if err := s.eng.Upgrade(ctx, cj, src); err != nil {
		if prev == job.Interrupted {
			prev = job.Suspended
		}
		_ = s.st.Apply(context.WithoutCancel(ctx), &job.Update{JobID: cj.ID, Owner: cj.Owner, State: &prev, Release: true})
		he := fromErr(err)
		if he.status == http.StatusInternalServerError {
			// The journal does not fit: the user's to fix, not ours.
			he = conflict("%v", err)
		}
		return "", he
	}
	empty := ""
	st := job.Queued
	if err := s.st.Apply(ctx, &job.Update{JobID: cj.ID, Owner: cj.Owner, State: &st, Release: true, Error: &empty}); err != nil {
		return "", fromErr(err)
	}
	return fmt.Sprintf("job %s upgraded to source %s", j.ID, src.Digest[:12]), nil
}

// signalJob is POST /jobs/{id}/signals: the job becomes queued and the
// loop continues it.
func (s *Server) signalJob(w http.ResponseWriter, r *http.Request, u user) *httpError {
	var body api.SignalBody
	if he := decode(w, r, &body, s.o.MaxBody, false); he != nil {
		return he
	}
	if body.Name == "" {
		return badRequest("a signal needs a name")
	}
	ctx := r.Context()
	id := r.PathValue("id")
	j, he := s.jobToChange(ctx, u, id)
	if he != nil {
		return he
	}
	j, err := s.eng.Signal(ctx, id, body.Name, body.Payload, u.name)
	if err != nil {
		if errors.Is(err, job.ErrNotWaiting) {
			return conflict("cannot signal job %s: %v", id, err)
		}
		return fromErr(err)
	}
	if j.ParentID != "" {
		// The parent settled waiting for its children; queue it so that
		// its drive runs the signalled child.
		if p, err := s.st.Job(ctx, j.ParentID); err == nil && p.State == job.Waiting {
			if _, err := s.st.SetState(ctx, p.ID, []job.State{job.Waiting}, job.Queued, time.Now()); err == nil {
				s.eng.Wake()
			}
		}
	}
	s.log.Info("signal delivered", "job", id, "signal", body.Name, "user", u.name)
	writeJSON(w, http.StatusOK, s.view(j))
	return nil
}

// records is GET /jobs/{id}/output and /logs: a page of a stream.
func (s *Server) records(stream job.Stream) handler {
	return func(w http.ResponseWriter, r *http.Request, u user) *httpError {
		ctx := r.Context()
		id := r.PathValue("id")
		if _, he := s.jobFor(ctx, u, id); he != nil {
			return he
		}
		after, he := intParam(r, "after", 0, 0, 1<<62)
		if he != nil {
			return he
		}
		limit, he := intParam(r, "limit", 1000, 1, 10000)
		if he != nil {
			return he
		}
		recs, err := s.st.Records(ctx, id, stream, after, int(limit))
		if err != nil {
			return fromErr(err)
		}
		out := api.Records{Records: recs, Next: after}
		if out.Records == nil {
			out.Records = []job.Record{}
		}
		if n := len(recs); n > 0 {
			out.Next = recs[n-1].Seq
		}
		writeJSON(w, http.StatusOK, out)
		return nil
	}
}
