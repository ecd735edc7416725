package server

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// metrics are the server's Prometheus metrics, in a registry of its own.
type metrics struct {
	s   *Server
	reg *prometheus.Registry
	h   http.Handler

	submitted prometheus.Counter
	finished  *prometheus.CounterVec
	steps     *prometheus.CounterVec
	stepTime  *prometheus.HistogramVec
	followers prometheus.Gauge
	requests  *prometheus.CounterVec
	reqTime   *prometheus.HistogramVec
	fires     *prometheus.CounterVec
	leader    prometheus.Gauge
}

func newMetrics(s *Server) *metrics {
	m := &metrics{s: s, reg: prometheus.NewRegistry()}
	m.submitted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "drover_jobs_submitted_total", Help: "Jobs created through the API (a fan-out counts once).",
	})
	m.finished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_jobs_finished_total", Help: "Jobs this server ran that stopped running, by the state they stopped in.",
	}, []string{"state"})
	m.steps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_steps_total", Help: "Steps ended in jobs this server ran, by activity and outcome: done, failed, replayed, or paused (unloaded to wait or sleep, suspended, stopped, interrupted).",
	}, []string{"activity", "outcome"})
	m.stepTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "drover_step_duration_seconds", Help: "How long steps that ran to an end (done or failed, not replayed or paused) took, by activity.",
		Buckets: []float64{0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 60, 300, 900, 3600},
	}, []string{"activity"})
	m.followers = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "drover_event_followers", Help: "Open event streams (drover output/logs --follow, drover run in client mode, web pages).",
	})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_http_requests_total", Help: "API requests, by route and status code.",
	}, []string{"route", "code"})
	m.reqTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "drover_http_request_duration_seconds", Help: "How long API requests took, by route (event streams excluded).",
		Buckets: prometheus.DefBuckets,
	}, []string{"route"})
	m.fires = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_schedule_fires_total", Help: "Schedule fires this server committed, by schedule and outcome: job (a job was created) or error (none could be: see drover schedule list).",
	}, []string{"schedule", "outcome"})
	m.leader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "drover_scheduler_leader", Help: "1 while this server holds the scheduler lease and fires the schedules, else 0.",
	})
	m.reg.MustRegister(m.submitted, m.finished, m.steps, m.stepTime, m.followers, m.requests, m.reqTime, m.fires, m.leader,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&storeCollector{s: s}, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "drover_jobs_held", Help: "Jobs (children included) this server holds the lease of: running here now.",
		}, func() float64 { return float64(len(s.eng.Held())) }))
	if s.o.SSH != nil {
		m.reg.MustRegister(&sshCollector{s: s})
	}
	m.h = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: nil})
	return m
}

func (m *metrics) serve(w http.ResponseWriter, r *http.Request, u user) *httpError {
	m.h.ServeHTTP(w, r)
	return nil
}

// fired counts a schedule's fire.
func (m *metrics) fired(sc *job.Schedule, j *job.Job, errMsg string) {
	outcome := "job"
	if j == nil {
		outcome = "error"
	}
	m.fires.WithLabelValues(sc.Name, outcome).Inc()
}

func (m *metrics) leading(v bool) {
	if v {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
}

func (m *metrics) jobEnded(j *job.Job) {
	m.finished.WithLabelValues(string(j.State)).Inc()
}

func (m *metrics) step(ev engine.StepEvent) {
	if !ev.Done {
		return
	}
	var se *engine.StepError
	outcome := "done"
	switch {
	case ev.Replayed:
		outcome = "replayed"
	case errors.As(ev.Err, &se):
		outcome = "failed"
	case ev.Err != nil:
		// Unloaded to wait or sleep, suspended, stopped or interrupted: it
		// goes on (or runs again) later.
		outcome = "paused"
	}
	m.steps.WithLabelValues(ev.Activity, outcome).Inc()
	if outcome == "done" || outcome == "failed" {
		m.stepTime.WithLabelValues(ev.Activity).Observe(ev.Duration.Seconds())
	}
}

func (m *metrics) request(route string, status int, d time.Duration) {
	if route == "" {
		route = "unmatched"
	}
	if status == 0 {
		status = http.StatusOK
	}
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	if route != "GET /api/v1/jobs/{id}/events" {
		m.reqTime.WithLabelValues(route).Observe(d.Seconds())
	}
}

// storeCollector reads the job counts from the store at each scrape.
type storeCollector struct{ s *Server }

var (
	jobsDesc = prometheus.NewDesc("drover_jobs", "Jobs in the store (children included), by state.", []string{"state"}, nil)
	// Queued top-level jobs wait for a slot under --max-running.
	queueDesc = prometheus.NewDesc("drover_queue_depth", "Top-level jobs queued, waiting for the server to start them.", nil, nil)
	upDesc    = prometheus.NewDesc("drover_store_up", "1 when the last scrape could read the store.", nil, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- jobsDesc
	ch <- queueDesc
	ch <- upDesc
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	all, top, err := c.counts(ctx)
	if err != nil {
		c.s.log.Warn("metrics: counting jobs", "err", err)
		ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(upDesc, prometheus.GaugeValue, 1)
	for _, st := range job.AllStates {
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(all[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(top[job.Queued]))
}

func (c *storeCollector) counts(ctx context.Context) (all, top map[job.State]int, err error) {
	now := time.Now()
	if jc, ok := c.s.st.(jobCounter); ok {
		if all, err = jc.CountJobs(ctx, now, false); err != nil {
			return nil, nil, err
		}
		if top, err = jc.CountJobs(ctx, now, true); err != nil {
			return nil, nil, err
		}
		return all, top, nil
	}
	jobs, err := c.s.st.Jobs(ctx, job.Filter{}, now)
	if err != nil {
		return nil, nil, err
	}
	all, top = map[job.State]int{}, map[job.State]int{}
	for _, j := range jobs {
		st := j.EffectiveState(now)
		all[st]++
		if j.ParentID == "" {
			top[st]++
		}
	}
	return all, top, nil
}

// sshCollector reports the SSH connection manager's counters.
type sshCollector struct{ s *Server }

var (
	sshConns    = prometheus.NewDesc("drover_ssh_connections_open", "SSH connections open.", nil, nil)
	sshSessions = prometheus.NewDesc("drover_ssh_sessions_open", "SSH sessions open (commands and transfers running).", nil, nil)
	sshWaiting  = prometheus.NewDesc("drover_ssh_waiting", "Remote commands waiting for a connection or a session slot.", nil, nil)
	sshShaking  = prometheus.NewDesc("drover_ssh_handshakes_in_flight", "SSH connection set-ups in progress.", nil, nil)
	sshDials    = prometheus.NewDesc("drover_ssh_dials_total", "SSH connections dialled.", nil, nil)
	sshFailures = prometheus.NewDesc("drover_ssh_handshake_failures_total", "SSH connection set-ups that failed.", nil, nil)
	sshRedials  = prometheus.NewDesc("drover_ssh_redials_total", "SSH connections dialled again after one broke.", nil, nil)
	sshReattach = prometheus.NewDesc("drover_ssh_reattached_total", "Supervised remote commands re-attached after a restart.", nil, nil)
)

func (c *sshCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{sshConns, sshSessions, sshWaiting, sshShaking, sshDials, sshFailures, sshRedials, sshReattach} {
		ch <- d
	}
}

func (c *sshCollector) Collect(ch chan<- prometheus.Metric) {
	m, ok := c.s.o.SSH()
	if !ok {
		return
	}
	g := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	k := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	g(sshConns, m.ConnsOpen)
	g(sshSessions, m.SessionsOpen)
	g(sshWaiting, m.Waiting)
	g(sshShaking, m.HandshakesInFlight)
	k(sshDials, m.Dials)
	k(sshFailures, m.HandshakeFailures)
	k(sshRedials, m.Redials)
	k(sshReattach, m.Reattached)
}
