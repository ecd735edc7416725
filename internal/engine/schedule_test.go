package engine_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// clock is a settable clock for engines under test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

const greet = `
def main(who, times=1):
    return "hello " + who
`

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

// schedHarness is a harness whose engine runs on a settable clock, with
// the workflow "greet" registered.
func schedHarness(t *testing.T, start string) (*harness, *clock) {
	c := &clock{t: utc(start)}
	h := newHarness(t, func(o *engine.Options) { o.Now = c.now })
	if _, err := h.st.PutWorkflow(h.ctx, "greet", h.source(greet), c.now()); err != nil {
		t.Fatal(err)
	}
	return h, c
}

func (h *harness) addSchedule(spec engine.ScheduleSpec) *job.Schedule {
	h.t.Helper()
	sc, err := h.eng.NewSchedule(h.ctx, spec)
	if err != nil {
		h.t.Fatalf("NewSchedule: %v", err)
	}
	if err := h.st.AddSchedule(h.ctx, sc); err != nil {
		h.t.Fatalf("AddSchedule: %v", err)
	}
	return sc
}

func (h *harness) scheduledJobs(name string) []*job.Job {
	h.t.Helper()
	jobs, err := h.st.Jobs(h.ctx, job.Filter{}, time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	var out []*job.Job
	for _, j := range jobs {
		if j.Name == engine.ScheduleJobPrefix+name {
			out = append(out, j)
		}
	}
	return out
}

func (h *harness) fireDue(e *engine.Engine) time.Time {
	h.t.Helper()
	next, err := e.FireDue(h.ctx, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), nil)
	if err != nil {
		h.t.Fatalf("FireDue: %v", err)
	}
	return next
}

func TestScheduleValidation(t *testing.T) {
	h, _ := schedHarness(t, "2030-01-01T10:00:30Z")
	for _, c := range []struct {
		spec engine.ScheduleSpec
		want string
	}{
		{engine.ScheduleSpec{Name: "a", Cron: "not a cron", Workflow: "greet", Params: []string{"who=x"}}, `cron expression "not a cron"`},
		{engine.ScheduleSpec{Name: "a", Cron: "61 * * * *", Workflow: "greet", Params: []string{"who=x"}}, "61"},
		{engine.ScheduleSpec{Name: "a", Cron: "0 0 30 2 *", Workflow: "greet", Params: []string{"who=x"}}, "never fires"},
		{engine.ScheduleSpec{Name: "a", Cron: "CRON_TZ=UTC", Workflow: "greet", Params: []string{"who=x"}}, "needs an expression after it"},
		{engine.ScheduleSpec{Name: "a", Cron: "CRON_TZ=UTC @hourly", Timezone: "Europe/Paris", Workflow: "greet", Params: []string{"who=x"}}, "give one"},
		{engine.ScheduleSpec{Name: "a", Cron: "@hourly", Timezone: "Mars/Olympus", Workflow: "greet", Params: []string{"who=x"}}, "Mars/Olympus"},
		{engine.ScheduleSpec{Name: "a", Cron: "@hourly", Workflow: "nope"}, `no workflow named "nope"`},
		{engine.ScheduleSpec{Name: "a", Cron: "@hourly", Workflow: "greet"}, "who"},
		{engine.ScheduleSpec{Name: "a", Cron: "@hourly", Workflow: "greet", Params: []string{"who=x", "bogus=1"}}, "bogus"},
		{engine.ScheduleSpec{Name: "a", Cron: "@hourly", Workflow: "greet", Params: []string{"who=x", "times=many"}}, "times"},
		{engine.ScheduleSpec{Name: "a/b", Cron: "@hourly", Workflow: "greet", Params: []string{"who=x"}}, "schedule name"},
	} {
		_, err := h.eng.NewSchedule(h.ctx, c.spec)
		if err == nil || !errors.Is(err, engine.ErrUsage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewSchedule(%+v) = %v, want a usage error with %q", c.spec, err, c.want)
		}
	}
	// Time zones: the expression reads in UTC unless told otherwise.
	for _, c := range []struct {
		cron, tz, next string
	}{
		{"0 9 * * *", "", "2030-01-02T09:00:00Z"},
		{"0 9 * * *", "America/New_York", "2030-01-01T14:00:00Z"},
		{"CRON_TZ=America/New_York 0 9 * * *", "", "2030-01-01T14:00:00Z"},
		{"@every 90s", "", "2030-01-01T10:02:00Z"},
	} {
		sc, err := h.eng.NewSchedule(h.ctx, engine.ScheduleSpec{Name: "tz", Cron: c.cron, Timezone: c.tz, Workflow: "greet", Params: []string{"who=x"}})
		if err != nil {
			t.Fatalf("%s in %q: %v", c.cron, c.tz, err)
		}
		if !sc.NextFire.Equal(utc(c.next)) {
			t.Errorf("%s in %q: next fire %s, want %s", c.cron, c.tz, sc.NextFire.UTC(), c.next)
		}
	}
}

// TestScheduleFires: a schedule fires once per scheduled time, creates a
// queued job with its parameters bound, fires once for a missed period
// and then goes on from now.
func TestScheduleFires(t *testing.T) {
	h, c := schedHarness(t, "2030-01-01T10:00:30Z")
	h.addSchedule(engine.ScheduleSpec{Name: "hourly", Cron: "5 * * * *", Workflow: "greet", Params: []string{"who=world", "times=2"}, CreatedBy: "alice"})

	c.set(utc("2030-01-01T10:04:59Z"))
	if next := h.fireDue(h.eng); !next.Equal(utc("2030-01-01T10:05:00Z")) {
		t.Errorf("next = %s", next)
	}
	if n := len(h.scheduledJobs("hourly")); n != 0 {
		t.Fatalf("%d jobs before the time", n)
	}

	c.set(utc("2030-01-01T10:05:00.2Z"))
	h.fireDue(h.eng)
	h.fireDue(h.eng) // the same time again: nothing more
	jobs := h.scheduledJobs("hourly")
	if len(jobs) != 1 {
		t.Fatalf("%d jobs after one fire time, want 1", len(jobs))
	}
	j := jobs[0]
	if j.State != job.Queued || j.Workflow != "greet" || j.CreatedBy != "alice" || string(j.Input) != `{"times":2,"who":"world"}` {
		t.Errorf("fired job = state %s workflow %q created_by %q input %s", j.State, j.Workflow, j.CreatedBy, j.Input)
	}
	sc, err := h.st.Schedule(h.ctx, "hourly")
	if err != nil {
		t.Fatal(err)
	}
	if !sc.LastFire.Equal(utc("2030-01-01T10:05:00Z")) || sc.LastJob != j.ID || !sc.NextFire.Equal(utc("2030-01-01T11:05:00Z")) || sc.Fires != 1 {
		t.Errorf("after the fire: last %s job %s next %s fires %d", sc.LastFire, sc.LastJob, sc.NextFire, sc.Fires)
	}

	// Five hours without a server: one fire, for the first missed time,
	// then the schedule goes on from now.
	c.set(utc("2030-01-01T15:30:00Z"))
	h.fireDue(h.eng)
	h.fireDue(h.eng)
	if n := len(h.scheduledJobs("hourly")); n != 2 {
		t.Fatalf("%d jobs after a missed period, want 2", n)
	}
	sc, _ = h.st.Schedule(h.ctx, "hourly")
	if !sc.LastFire.Equal(utc("2030-01-01T11:05:00Z")) || !sc.NextFire.Equal(utc("2030-01-01T16:05:00Z")) {
		t.Errorf("after missed fires: last %s next %s", sc.LastFire.UTC(), sc.NextFire.UTC())
	}

	// The workflow gone: the time passes without a job, and says why.
	if err := h.st.DeleteWorkflow(h.ctx, "greet"); err != nil {
		t.Fatal(err)
	}
	c.set(utc("2030-01-01T16:05:01Z"))
	h.fireDue(h.eng)
	sc, _ = h.st.Schedule(h.ctx, "hourly")
	if n := len(h.scheduledJobs("hourly")); n != 2 || !strings.Contains(sc.LastError, `no workflow named "greet"`) ||
		sc.LastJob != "" || !sc.NextFire.Equal(utc("2030-01-01T17:05:00Z")) {
		t.Errorf("fire without workflow: %d jobs, last error %q, last job %q, next %s", n, sc.LastError, sc.LastJob, sc.NextFire.UTC())
	}
}

// TestScheduleTwoLeaders: two engines that both believe they lead fire
// every time exactly once between them.
func TestScheduleTwoLeaders(t *testing.T) {
	h, c := schedHarness(t, "2030-01-01T10:00:00.5Z")
	other := h.newEngine(func(o *engine.Options) { o.Now = c.now })
	h.addSchedule(engine.ScheduleSpec{Name: "often", Cron: "@every 1s", Workflow: "greet", Params: []string{"who=x"}})
	var byA, byB atomic.Int64
	const ticks = 40
	for i := 1; i <= ticks; i++ {
		c.set(utc("2030-01-01T10:00:00.5Z").Add(time.Duration(i) * time.Second))
		var wg sync.WaitGroup
		for _, x := range []struct {
			e *engine.Engine
			n *atomic.Int64
		}{{h.eng, &byA}, {other, &byB}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := x.e.FireDue(h.ctx, c.now().Add(time.Hour), func(*job.Schedule, *job.Job, string) { x.n.Add(1) }); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	jobs := h.scheduledJobs("often")
	if len(jobs) != ticks || byA.Load()+byB.Load() != ticks {
		t.Errorf("%d jobs, %d+%d fires reported for %d times", len(jobs), byA.Load(), byB.Load(), ticks)
	}
}

// TestSchedulerLease: one engine leads at a time; when it stops, it gives
// up the lease and the other takes over and fires.
func TestSchedulerLease(t *testing.T) {
	h := newHarness(t, func(o *engine.Options) { o.Lease = 600 * time.Millisecond; o.Poll = 50 * time.Millisecond })
	if _, err := h.st.PutWorkflow(h.ctx, "greet", h.source(greet), time.Now()); err != nil {
		t.Fatal(err)
	}
	b := h.newEngine(func(o *engine.Options) { o.Lease = 600 * time.Millisecond; o.Poll = 50 * time.Millisecond })
	h.addSchedule(engine.ScheduleSpec{Name: "often", Cron: "@every 1s", Workflow: "greet", Params: []string{"who=x"}})
	var leadA, leadB atomic.Bool
	firedBy := map[string]int{}
	var mu sync.Mutex
	run := func(e *engine.Engine, name string, lead *atomic.Bool) (context.CancelFunc, chan struct{}) {
		ctx, cancel := context.WithCancel(h.ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			e.RunScheduler(ctx, engine.SchedulerOptions{
				Leading: lead.Store,
				Fired: func(*job.Schedule, *job.Job, string) {
					mu.Lock()
					firedBy[name]++
					mu.Unlock()
				},
			})
		}()
		return cancel, done
	}
	stopA, doneA := run(h.eng, "a", &leadA)
	waitFor(t, 2*time.Second, func() bool { return leadA.Load() })
	stopB, doneB := run(b, "b", &leadB)
	defer func() { stopB(); <-doneB }()
	time.Sleep(1500 * time.Millisecond)
	if leadB.Load() {
		t.Fatal("both engines lead")
	}
	stopA()
	<-doneA
	waitFor(t, time.Second, func() bool { return leadB.Load() }) // released: no need to wait out the lease
	time.Sleep(1500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if firedBy["a"] == 0 || firedBy["b"] == 0 {
		t.Errorf("fires by engine: %v, want both", firedBy)
	}
	if n := len(h.scheduledJobs("often")); n != firedBy["a"]+firedBy["b"] {
		t.Errorf("%d jobs for %v fires", n, firedBy)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
