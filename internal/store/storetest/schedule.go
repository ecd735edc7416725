package storetest

import (
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
)

// The schedule rules:
//
//   - AddSchedule refuses a name in use (job.ErrExists); Schedules lists
//     by name; DeleteSchedule and Schedule of an unknown name fail with
//     job.ErrNotFound. Params read back in order, never nil.
//   - FireSchedule is a compare-and-set on the schedule's NextFire, and
//     (schedule, At) is unique: firing a time twice, even at once from
//     several callers, commits once and fails job.ErrFired otherwise,
//     writing nothing (no job). A fire without a job records its error.
//   - Lease: one holder at a time until its lease expires; the holder
//     renews; ReleaseLease frees it for the next at once.

func newSchedule(name string, next time.Time) *job.Schedule {
	return &job.Schedule{Name: name, Cron: "@every 1m", Workflow: "patch", Params: []string{"b=2", "a=1"},
		CreatedBy: "alice", Created: next.Add(-time.Minute), NextFire: next}
}

func testSchedules(t *testing.T, e *env) {
	_, err := e.st.Schedule(e.ctx, "nightly")
	wantErr(t, "Schedule unknown", err, job.ErrNotFound)
	if scs, err := e.st.Schedules(e.ctx); err != nil || len(scs) != 0 {
		t.Errorf("Schedules of an empty store = %v, %v", scs, err)
	}
	t1 := e.base.Add(time.Hour)
	if err := e.st.AddSchedule(e.ctx, newSchedule("nightly", t1)); err != nil {
		t.Fatalf("AddSchedule: %v", err)
	}
	wantErr(t, "AddSchedule again", e.st.AddSchedule(e.ctx, newSchedule("nightly", t1)), job.ErrExists, "nightly")
	empty := newSchedule("bare", t1)
	empty.Params = nil
	if err := e.st.AddSchedule(e.ctx, empty); err != nil {
		t.Fatalf("AddSchedule bare: %v", err)
	}
	sc, err := e.st.Schedule(e.ctx, "nightly")
	if err != nil {
		t.Fatalf("Schedule: %v", err)
	}
	if sc.Cron != "@every 1m" || sc.Workflow != "patch" || len(sc.Params) != 2 || sc.Params[0] != "b=2" || sc.CreatedBy != "alice" ||
		sc.Fires != 0 || sc.LastJob != "" || !sc.LastFire.IsZero() {
		t.Errorf("Schedule = %+v", sc)
	}
	sameTime(t, "NextFire", sc.NextFire, t1)
	sameTime(t, "Created", sc.Created, t1.Add(-time.Minute))
	scs, err := e.st.Schedules(e.ctx)
	if err != nil || len(scs) != 2 || scs[0].Name != "bare" || scs[1].Name != "nightly" || scs[0].Params == nil {
		t.Errorf("Schedules = %+v, %v", scs, err)
	}
	if err := e.st.DeleteSchedule(e.ctx, "bare"); err != nil {
		t.Fatalf("DeleteSchedule: %v", err)
	}
	wantErr(t, "DeleteSchedule again", e.st.DeleteSchedule(e.ctx, "bare"), job.ErrNotFound)
	wantErr(t, "FireSchedule of a removed schedule",
		e.st.FireSchedule(e.ctx, &job.Fire{Schedule: "bare", At: t1, Next: t1.Add(time.Minute), Fired: t1}), job.ErrNotFound)
}

func testScheduleFireOnce(t *testing.T, e *env) {
	t1 := e.base.Add(time.Hour)
	if err := e.st.AddSchedule(e.ctx, newSchedule("often", t1)); err != nil {
		t.Fatalf("AddSchedule: %v", err)
	}
	fire := func(id string, at time.Time) *job.Fire {
		var j *job.Job
		if id != "" {
			j = e.newJob(id)
			j.Name = "schedule:often"
		}
		return &job.Fire{Schedule: "often", At: at, Next: at.Add(time.Minute), Fired: at.Add(time.Second), Job: j, Source: e.source()}
	}
	// Several callers fire the same time at once: one commits.
	const n = 8
	errs := make([]error, n)
	fires := make([]*job.Fire, n) // built here: env is not safe for concurrent use
	for i := range n {
		fires[i] = fire("j"+string(rune('a'+i)), t1)
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.st.FireSchedule(e.ctx, fires[i])
		}()
	}
	wg.Wait()
	won := ""
	for i, err := range errs {
		switch {
		case err == nil:
			if won != "" {
				t.Errorf("time fired twice: by %s and %d", won, i)
			}
			won = "j" + string(rune('a'+i))
		default:
			wantErr(t, "a concurrent fire of the same time", err, job.ErrFired)
		}
	}
	if won == "" {
		t.Fatal("no fire committed")
	}
	jobs, err := e.st.Jobs(e.ctx, job.Filter{}, time.Now())
	if err != nil || len(jobs) != 1 || jobs[0].ID != won || jobs[0].State != job.Queued || jobs[0].Name != "schedule:often" {
		t.Fatalf("jobs after the fires = %v, %v; want only %s, queued", jobs, err, won)
	}
	sc, err := e.st.Schedule(e.ctx, "often")
	if err != nil {
		t.Fatal(err)
	}
	if sc.LastJob != won || sc.Fires != 1 || sc.LastError != "" {
		t.Errorf("after the fire: %+v", sc)
	}
	sameTime(t, "LastFire", sc.LastFire, t1)
	sameTime(t, "NextFire", sc.NextFire, t1.Add(time.Minute))

	// A stale caller that still sees t1 as next, and one with a time the
	// schedule never waited for, both write nothing.
	wantErr(t, "fire a fired time", e.st.FireSchedule(e.ctx, fire("stale", t1)), job.ErrFired)
	wantErr(t, "fire a time not waited for", e.st.FireSchedule(e.ctx, fire("other", t1.Add(30*time.Second))), job.ErrFired)
	if _, err := e.st.Job(e.ctx, "stale"); err == nil {
		t.Error("a refused fire created its job")
	}

	// A fire without a job moves the schedule on and says why.
	t2 := t1.Add(time.Minute)
	f := fire("", t2)
	f.Error = "no workflow named patch"
	if err := e.st.FireSchedule(e.ctx, f); err != nil {
		t.Fatalf("fire without a job: %v", err)
	}
	sc, _ = e.st.Schedule(e.ctx, "often")
	if sc.LastJob != "" || sc.LastError != f.Error || sc.Fires != 2 {
		t.Errorf("after a fire without a job: %+v", sc)
	}
	sameTime(t, "NextFire", sc.NextFire, t2.Add(time.Minute))
	// The next fire with a job clears the error.
	if err := e.st.FireSchedule(e.ctx, fire("late", t2.Add(time.Minute))); err != nil {
		t.Fatal(err)
	}
	if sc, _ = e.st.Schedule(e.ctx, "often"); sc.LastJob != "late" || sc.LastError != "" {
		t.Errorf("after a fire with a job: %+v", sc)
	}
}

func testLeases(t *testing.T, e *env) {
	now := time.Now().Truncate(time.Millisecond)
	take := func(holder string, until, at time.Time) (string, time.Time) {
		t.Helper()
		h, u, err := e.st.Lease(e.ctx, "scheduler", holder, until, at)
		if err != nil {
			t.Fatalf("Lease %s: %v", holder, err)
		}
		return h, u
	}
	if h, u := take("a", now.Add(10*time.Second), now); h != "a" {
		t.Fatalf("first lease went to %q", h)
	} else {
		sameTime(t, "lease until", u, now.Add(10*time.Second))
	}
	if h, _ := take("b", now.Add(11*time.Second), now.Add(time.Second)); h != "a" {
		t.Errorf("b took a live lease of a: holder %q", h)
	}
	if h, u := take("a", now.Add(12*time.Second), now.Add(2*time.Second)); h != "a" {
		t.Errorf("a could not renew: holder %q", h)
	} else {
		sameTime(t, "renewed until", u, now.Add(12*time.Second))
	}
	// Expired: b takes it, and a cannot get it back.
	if h, _ := take("b", now.Add(30*time.Second), now.Add(13*time.Second)); h != "b" {
		t.Errorf("b could not take an expired lease: holder %q", h)
	}
	if h, _ := take("a", now.Add(31*time.Second), now.Add(14*time.Second)); h != "b" {
		t.Errorf("a took b's live lease back: holder %q", h)
	}
	// Releasing another's lease does nothing; releasing one's own frees it.
	if err := e.st.ReleaseLease(e.ctx, "scheduler", "a"); err != nil {
		t.Fatal(err)
	}
	if h, _ := take("c", now.Add(40*time.Second), now.Add(15*time.Second)); h != "b" {
		t.Errorf("a released b's lease: holder %q", h)
	}
	if err := e.st.ReleaseLease(e.ctx, "scheduler", "b"); err != nil {
		t.Fatal(err)
	}
	if h, _ := take("c", now.Add(40*time.Second), now.Add(15*time.Second)); h != "c" {
		t.Errorf("after b released: holder %q", h)
	}
	// Leases of other names are apart.
	if h, _, err := e.st.Lease(e.ctx, "other", "a", now.Add(time.Minute), now); err != nil || h != "a" {
		t.Errorf("another name: %q, %v", h, err)
	}
}
