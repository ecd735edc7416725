// Package server is drover server: the engine as a long-lived service
// with an HTTP JSON API. It runs due jobs under a throttle (queued jobs
// start in submission order), lets clients create, follow and act on
// jobs with bearer tokens and roles, streams output, logs and progress
// as server-sent events, and exposes Prometheus metrics. docs/api.md
// describes the API.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/remote"
	"github.com/drover/drover/internal/web"
)

// Options configure a Server.
type Options struct {
	// Engine configures the server's engine; Engine.Store is required.
	Engine engine.Options
	// Auth checks tokens. nil serves every request as an anonymous admin:
	// only for a loopback address (the command refuses otherwise).
	Auth AuthStore
	// MaxRunning caps the jobs running at once (MaxRunningWorkflows); the
	// rest wait queued and start in submission order. Default 64.
	MaxRunning int
	// Grace is how long a shutdown waits for running jobs to reach a safe
	// point before it interrupts their running steps. Default 30s.
	Grace time.Duration
	// MaxBody bounds a request body. Default 8 MiB.
	MaxBody int64
	// Poll is how often followed jobs are read for new records. Default
	// 200ms.
	Poll time.Duration
	// StreamWriteTimeout is how long an event stream's client may take to
	// accept a write before it is dropped. Default 10s.
	StreamWriteTimeout time.Duration
	// SSH reports the SSH connection manager's counters once it exists.
	SSH    func() (remote.Metrics, bool)
	Logger *slog.Logger
}

// ShutdownReason is the suspension reason of the jobs a server stops at a
// safe point when it shuts down; it queues them again before it exits,
// so that the next server (or drover resume --all) continues them.
const ShutdownReason = "suspended by the server's shutdown"

// Server is drover server. Create it with New, serve Handler over HTTP and
// call Run; cancelling Run's context shuts it down.
type Server struct {
	o       Options
	eng     *engine.Engine
	st      engine.Store // the store itself; the engine's is wrapped
	auth    AuthStore
	log     *slog.Logger
	hub     *hub
	metrics *metrics
	mux     *http.ServeMux

	draining atomic.Bool
	drainCh  chan struct{} // closed when the shutdown starts
	drainOne sync.Once
	side     sync.WaitGroup // drives outside the Serve loop

	touchMu sync.Mutex
	touched map[string]time.Time
}

// New makes a server and its engine.
func New(o Options) (*Server, error) {
	if o.Engine.Store == nil {
		return nil, errors.New("server: no store")
	}
	if o.MaxRunning <= 0 {
		o.MaxRunning = 64
	}
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	if o.MaxBody <= 0 {
		o.MaxBody = 8 << 20
	}
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	if o.StreamWriteTimeout <= 0 {
		o.StreamWriteTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	st := o.Engine.Store
	eo := o.Engine
	eo.Store = engineStore(st)
	if eo.Logger == nil {
		eo.Logger = o.Logger
	}
	s := &Server{o: o, st: st, auth: o.Auth, log: o.Logger, drainCh: make(chan struct{}), touched: map[string]time.Time{}}
	s.eng = engine.New(eo)
	s.hub = newHub(s)
	s.metrics = newMetrics(s)
	s.routes()
	return s, nil
}

// Engine is the server's engine.
func (s *Server) Engine() *engine.Engine { return s.eng }

// Handler serves the API, health, readiness and metrics.
func (s *Server) Handler() http.Handler { return s.middleware(s.mux) }

// Run runs due jobs until ctx ends, then shuts down: it takes no new
// jobs, asks the running ones to suspend at their next safe point, and
// after Grace interrupts their running steps (which run again on
// resume). Jobs it suspended are queued again, so that the next server
// resumes every job that was queued, running or due. A job still held
// when Run gives up is left to its lease, as after a crash. Followers'
// event streams end at once, and their clients reconnect to the next
// server.
func (s *Server) Run(ctx context.Context) error {
	serveCtx, stopServe := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServe()
	obs := &observer{s: s}
	served := make(chan error, 1)
	go func() {
		served <- s.eng.Serve(serveCtx, engine.ServeOptions{
			MaxRunning: s.o.MaxRunning,
			Observer:   obs,
			Ended:      s.ended,
			TopLevel:   true,
		})
	}()
	// Every server runs the scheduler; the one holding the scheduler
	// lease fires the schedules, the others stand by to take over.
	scheduled := make(chan struct{})
	go func() {
		defer close(scheduled)
		_ = s.eng.RunScheduler(serveCtx, engine.SchedulerOptions{Fired: s.metrics.fired, Leading: s.metrics.leading})
	}()
	defer func() { stopServe(); <-scheduled }()
	s.log.Info("serving jobs", "max_running", s.o.MaxRunning)
	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("the job loop ended: %w", err)
	}

	s.startDrain()
	stopServe()
	s.log.Info("shutting down: suspending running jobs at their next safe point", "grace", s.o.Grace)
	done := make(chan struct{})
	var err error
	go func() {
		err = <-served
		s.side.Wait()
		close(done)
	}()
	held := map[string]bool{}
	suspendHeld := func() {
		for _, id := range s.eng.Held() {
			if held[id] {
				continue
			}
			held[id] = true
			if _, err := s.eng.Request(context.Background(), id, job.ActionSuspend, ShutdownReason); err != nil {
				s.log.Warn("suspending a job for the shutdown", "job", id, "err", err)
			}
		}
	}
	grace := time.NewTimer(s.o.Grace)
	defer grace.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	interrupted := false
wait:
	for {
		suspendHeld()
		select {
		case <-done:
			break wait
		case <-tick.C:
		case <-grace.C:
			if interrupted {
				s.log.Warn("jobs still running after the grace period; leaving them to their lease", "jobs", len(s.eng.Held()))
				break wait
			}
			interrupted = true
			s.log.Warn("interrupting the running steps of jobs that did not reach a safe point", "jobs", len(s.eng.Held()))
			for _, id := range s.eng.Held() {
				s.eng.Interrupt(id)
			}
			grace.Reset(min(s.o.Grace, 10*time.Second))
		}
	}
	s.requeue(held)
	return err
}

// startDrain makes the server refuse new work and ends event streams.
func (s *Server) startDrain() {
	s.drainOne.Do(func() {
		s.draining.Store(true)
		close(s.drainCh)
		s.hub.closeAll()
	})
}

// requeue queues again the top-level jobs the shutdown suspended, and
// the parents it held (their children were suspended or left waiting on
// timers), so that the next server continues them.
func (s *Server) requeue(held map[string]bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n := 0
	for id := range held {
		j, err := s.st.Job(ctx, id)
		if err != nil || j.ParentID != "" {
			continue
		}
		from := job.State("")
		switch {
		case j.State == job.Suspended && (j.Reason == ShutdownReason || len(j.Spec) > 0):
			from = job.Suspended
		case j.State == job.Waiting && len(j.Spec) > 0:
			from = job.Waiting
		default:
			continue
		}
		if _, err := s.st.SetState(ctx, id, []job.State{from}, job.Queued, time.Now()); err != nil {
			s.log.Warn("queueing a job again for the next server", "job", id, "err", err)
			continue
		}
		n++
	}
	s.log.Info("shut down", "jobs_queued_again", n)
}

// Close ends the event streams and stops the engine. The store is the
// caller's to close.
func (s *Server) Close() {
	s.startDrain()
	s.eng.Close()
}

// ended is called when a job the Serve loop ran stops running.
func (s *Server) ended(j *job.Job) {
	s.metrics.jobEnded(j)
	s.hub.runEnded(j.ID)
}

// observer sees the events of the jobs this server runs: steps for the
// metrics and for followers' live status, progress to wake followers.
type observer struct{ s *Server }

var _ engine.Observer = (*observer)(nil)

func (o *observer) Record(r job.Record) { o.s.hub.observeRecord(r) }

func (o *observer) Step(ev engine.StepEvent) {
	o.s.metrics.step(ev)
	se := api.StepEvent{JobID: ev.JobID, Key: ev.Key, Activity: ev.Activity, Host: ev.Host, Done: ev.Done,
		Replayed: ev.Replayed, DurationMS: ev.Duration.Milliseconds()}
	if ev.Err != nil {
		se.Error = ev.Err.Error()
	}
	o.s.hub.observeLive(ev.JobID, api.StreamStep, se)
}

func (o *observer) Progress(jobID string, p job.Progress) {
	o.s.hub.observeLive(jobID, api.StreamProgress, api.ProgressEvent{JobID: jobID, Progress: p})
}

// routes registers the API.
func (s *Server) routes() {
	m := http.NewServeMux()
	p := api.Prefix
	m.HandleFunc("GET /healthz", s.healthz)
	m.HandleFunc("GET /readyz", s.readyz)
	m.Handle("GET /metrics", s.authed(auth.Viewer, s.metrics.serve))

	m.HandleFunc("POST "+p+"/login", s.login)
	m.HandleFunc("POST "+p+"/logout", s.logout)
	m.Handle("GET "+p+"/whoami", s.authed(auth.Viewer, s.whoami))

	m.Handle("GET "+p+"/jobs", s.authed(auth.Viewer, s.listJobs))
	m.Handle("POST "+p+"/jobs", s.authed(auth.Operator, s.createJob))
	m.Handle("GET "+p+"/jobs/{id}", s.authed(auth.Viewer, s.getJob))
	m.Handle("DELETE "+p+"/jobs/{id}", s.authed(auth.Operator, s.removeJob))
	m.Handle("POST "+p+"/jobs/{id}/suspend", s.authed(auth.Operator, s.suspendJob))
	m.Handle("POST "+p+"/jobs/{id}/stop", s.authed(auth.Operator, s.stopJob))
	m.Handle("POST "+p+"/jobs/{id}/resume", s.authed(auth.Operator, s.resumeJob))
	m.Handle("POST "+p+"/jobs/{id}/signals", s.authed(auth.Operator, s.signalJob))
	m.Handle("GET "+p+"/jobs/{id}/output", s.authed(auth.Viewer, s.records(job.Output)))
	m.Handle("GET "+p+"/jobs/{id}/logs", s.authed(auth.Viewer, s.records(job.Log)))
	m.Handle("GET "+p+"/jobs/{id}/events", s.authed(auth.Viewer, s.events))

	m.Handle("GET "+p+"/workflows", s.authed(auth.Viewer, s.listWorkflows))
	m.Handle("POST "+p+"/workflows", s.authed(auth.Admin, s.addWorkflow))
	m.Handle("GET "+p+"/workflows/{name}", s.authed(auth.Viewer, s.getWorkflow))
	m.Handle("DELETE "+p+"/workflows/{name}", s.authed(auth.Admin, s.removeWorkflow))

	m.Handle("GET "+p+"/schedules", s.authed(auth.Viewer, s.listSchedules))
	m.Handle("POST "+p+"/schedules", s.authed(auth.Operator, s.addSchedule))
	m.Handle("GET "+p+"/schedules/{name}", s.authed(auth.Viewer, s.getSchedule))
	m.Handle("DELETE "+p+"/schedules/{name}", s.authed(auth.Operator, s.removeSchedule))

	// Reserved for what SPEC 5 adds later.
	for _, r := range []string{"endpoints"} {
		m.Handle(p+"/"+r, s.authed(auth.Viewer, s.notYet(r)))
		m.Handle(p+"/"+r+"/", s.authed(auth.Viewer, s.notYet(r)))
	}
	web.Register(m) // the web page: GET / and GET /ui/...
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, notFound("no such API path: %s %s (see docs/api.md)", r.Method, r.URL.Path))
	})
	s.mux = m
}

func (s *Server) notYet(what string) handler {
	return func(w http.ResponseWriter, r *http.Request, u user) *httpError {
		return errorf(http.StatusNotImplemented, "not_implemented", "%s are not implemented by this drover yet", what)
	}
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 when the server takes work: not shutting down, and
// its store answers.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		writeError(w, errorf(http.StatusServiceUnavailable, "unavailable", "the server is shutting down"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if _, err := s.st.NextWake(ctx); err != nil {
		s.log.Warn("readiness: the store does not answer", "err", err)
		writeError(w, errorf(http.StatusServiceUnavailable, "unavailable", "the store does not answer"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, u user) *httpError {
	writeJSON(w, http.StatusOK, api.Whoami{Name: u.name, Role: string(u.role)})
	return nil
}

// reqInfo carries what the logging middleware reports of a request.
type reqInfo struct{ user string }

type reqInfoKey struct{}

func setUser(r *http.Request, name string) {
	if ri, ok := r.Context().Value(reqInfoKey{}).(*reqInfo); ok {
		ri.user = name
	}
}

// statusWriter remembers the status for logs and metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// middleware logs, counts and bounds every request, and turns a panic
// into a 500.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &reqInfo{}
		r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, ri))
		sw := &statusWriter{ResponseWriter: w}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic serving a request", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				if sw.status == 0 {
					writeError(sw, &httpError{status: http.StatusInternalServerError, code: "internal", msg: "internal error"})
				}
			}
			d := time.Since(start)
			s.metrics.request(r.Pattern, sw.status, d)
			s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "user", ri.user, "duration", d)
		}()
		next.ServeHTTP(sw, r)
	})
}
