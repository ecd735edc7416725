// Package storetest is the contract every engine.Store passes: the SQLite
// store and the PostgreSQL store run the very same tests.
//
// Beyond the comments of engine.Store, the suite pins down these rules:
//
//   - CreateJobs is one transaction: one bad job creates none. A job created
//     with an Owner is running, held by that owner until LeaseUntil.
//   - Claim is a compare-and-set. It fails with job.ErrHeld while another
//     live engine holds the job (checked first), job.ErrWrongState when the
//     job's state is not among the given ones, job.ErrNotFound for an
//     unknown id. Interrupted among the states matches a running job whose
//     lease expired or whose owner is steal. Owner may re-claim its own job.
//     A claim makes the job running, counts a run, sets Started once and
//     clears any pending request. Leases compare with the wall clock.
//   - Apply is fenced by owner: when owner does not hold the job nothing of
//     the update is written and the error is job.ErrLeaseLost. Steps are
//     upserted by key; Job.Steps counts the done ones. A Digest moves the
//     job to another stored source; an unknown one fails the whole update.
//   - Records are stored once per (job, stream, key); Seq grows.
//   - One Update may name a step key twice (the last wins, at the place of
//     the first) and a record key twice (the first is kept).
//   - Text is stored whatever its bytes: command output may hold NUL and
//     bytes that are not UTF-8. A store whose text type refuses them
//     (PostgreSQL) may store U+FFFD in their place, but may not fail the
//     write. JSON strings may hold \u0000.
//   - Signal needs a waiting job whose WaitFor has the name, else
//     job.ErrNotWaiting; it makes the job queued.
//   - Request on a job nobody holds: suspend makes it suspended (a no-op on
//     a suspended job), stop makes it stopped with Ended set; ended jobs
//     refuse both with job.ErrWrongState. On a held job the request is
//     recorded (a pending stop is not downgraded to suspend) and Renew
//     returns it until an Apply clears it.
//   - SetState refuses a job held at now (job.ErrHeld), clears the lease
//     and any request, sets Ended when moving to an ended state and clears
//     it otherwise.
//   - Due excludes jobs a live engine holds. Listings sort by (Created, ID).
//   - DeleteJob removes children recursively with all their rows.
//   - PutWorkflow: version 1 for a new name, the same version for the same
//     source, the next for a different one.
//
// Times are compared at millisecond precision so that stores keeping
// microseconds pass.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// Run runs the contract against stores made by open. Each subtest opens a
// new, empty store; Run closes it when the subtest ends, so open must not.
func Run(t *testing.T, open func(t *testing.T) engine.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"CreateAndRead", testCreateAndRead},
		{"CreateAtomic", testCreateAtomic},
		{"CreateOwned", testCreateOwned},
		{"Claim", testClaim},
		{"ClaimExpiredAndSteal", testClaimExpiredAndSteal},
		{"ClaimRace", testClaimRace},
		{"ApplyFields", testApplyFields},
		{"ApplySteps", testApplySteps},
		{"ApplyFencing", testApplyFencing},
		{"ApplyDigest", testApplyDigest},
		{"ApplyDuplicateKeys", testApplyDuplicateKeys},
		{"TextBytes", testTextBytes},
		{"Records", testRecords},
		{"Signals", testSignals},
		{"RequestUnheld", testRequestUnheld},
		{"RequestHeld", testRequestHeld},
		{"Renew", testRenew},
		{"SetState", testSetState},
		{"Due", testDue},
		{"Jobs", testJobs},
		{"JobsPaging", testJobsPaging},
		{"JobsCreatedBy", testJobsCreatedBy},
		{"CountChildren", testCountChildren},
		{"DeleteJob", testDeleteJob},
		{"Workflows", testWorkflows},
		{"Schedules", testSchedules},
		{"ScheduleFireOnce", testScheduleFireOnce},
		{"Leases", testLeases},
		{"ConcurrentJobs", testConcurrentJobs},
		{"ConcurrentSteps", testConcurrentSteps},
		{"ConcurrentFenced", testConcurrentFenced},
		{"ConcurrentRecords", testConcurrentRecords},
		{"ConcurrentAtomic", testConcurrentAtomic},
		{"CanceledContext", testCanceledContext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := open(t)
			t.Cleanup(func() {
				if err := st.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, &env{t: t, st: st, ctx: context.Background(), base: time.Now().Add(-time.Hour).Truncate(time.Millisecond)})
		})
	}
}

// env holds a subtest's store and helpers.
type env struct {
	t    *testing.T
	st   engine.Store
	ctx  context.Context
	base time.Time // creation times count up from here
	n    int
	src  *job.Source
}

func source(tag string) *job.Source {
	s := &job.Source{Entry: "main.star", Files: map[string]string{
		"main.star": "load(\"lib.star\", \"f\")\ndef main():\n    f() # " + tag + "\n",
		"lib.star":  "def f():\n    pass\n",
	}}
	s.Seal()
	return s
}

func (e *env) source() *job.Source {
	if e.src == nil {
		e.src = source("default")
	}
	return e.src
}

// newJob returns a queued job created after every job newJob made before.
func (e *env) newJob(id string) *job.Job {
	e.n++
	return &job.Job{
		ID:      id,
		Digest:  e.source().Digest,
		Input:   json.RawMessage(`{}`),
		State:   job.Queued,
		Persist: job.PersistCheckpoints,
		OnError: job.OnErrorFail,
		Created: e.base.Add(time.Duration(e.n) * time.Millisecond),
		Updated: e.base.Add(time.Duration(e.n) * time.Millisecond),
	}
}

func (e *env) create(jobs ...*job.Job) {
	e.t.Helper()
	if err := e.st.CreateJobs(e.ctx, e.source(), jobs...); err != nil {
		e.t.Fatalf("CreateJobs: %v", err)
	}
}

// add creates a queued job with the given id and returns it as stored.
func (e *env) add(id string) *job.Job {
	e.t.Helper()
	e.create(e.newJob(id))
	return e.get(id)
}

func (e *env) get(id string) *job.Job {
	e.t.Helper()
	j, err := e.st.Job(e.ctx, id)
	if err != nil {
		e.t.Fatalf("Job(%s): %v", id, err)
	}
	return j
}

func (e *env) claim(id, owner string, until time.Time, states ...job.State) *job.Job {
	e.t.Helper()
	if len(states) == 0 {
		states = []job.State{job.Queued}
	}
	j, err := e.st.Claim(e.ctx, id, owner, until, "", states)
	if err != nil {
		e.t.Fatalf("Claim(%s, %s): %v", id, owner, err)
	}
	return j
}

func (e *env) apply(u *job.Update) {
	e.t.Helper()
	if err := e.st.Apply(e.ctx, u); err != nil {
		e.t.Fatalf("Apply(%s, %s): %v", u.JobID, u.Owner, err)
	}
}

// park makes a held job waiting for names and releases it.
func (e *env) park(id, owner string, wake time.Time, names ...string) {
	e.t.Helper()
	st := job.Waiting
	e.apply(&job.Update{JobID: id, Owner: owner, State: &st, WakeAt: &wake, WaitFor: &names, Release: true})
}

// setState puts a new job in a state through a claim and an apply, the
// way an engine would.
func (e *env) finish(id string, st job.State) {
	e.t.Helper()
	e.claim(id, "setup", live())
	now := time.Now()
	u := &job.Update{JobID: id, Owner: "setup", State: &st, Release: true}
	if st.Ended() {
		u.Ended = &now
	}
	e.apply(u)
}

func live() time.Time    { return time.Now().Add(time.Hour) }
func expired() time.Time { return time.Now().Add(-time.Minute).Truncate(time.Millisecond) }

func ptr[T any](v T) *T { return &v }

func sameTime(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if got.IsZero() != want.IsZero() || got.Sub(want).Abs() >= time.Millisecond {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func sameJSON(t *testing.T, what string, got, want json.RawMessage) {
	t.Helper()
	if len(want) == 0 {
		if len(got) != 0 {
			t.Errorf("%s = %s, want none", what, got)
		}
		return
	}
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Errorf("%s = %q: %v", what, got, err)
		return
	}
	_ = json.Unmarshal(want, &w)
	gb, _ := json.Marshal(g)
	wb, _ := json.Marshal(w)
	if string(gb) != string(wb) {
		t.Errorf("%s = %s, want %s", what, got, want)
	}
}

func wantErr(t *testing.T, what string, err, target error, mentions ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: error %v, want %v", what, err, target)
		return
	}
	for _, m := range mentions {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("%s: error %q does not mention %q", what, err, m)
		}
	}
}

func ids(jobs []*job.Job) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}

func testCreateAndRead(t *testing.T, e *env) {
	src := e.source()
	j := e.newJob("j-full")
	j.Name = "patch fleet"
	j.Workflow = "patch"
	j.Path = "/srv/flows/patch.star"
	j.Input = json.RawMessage(`{"hosts":["a","b"],"batch":2}`)
	j.Timeout = 90 * time.Minute
	j.Target = "web1"
	j.Vars = json.RawMessage(`{"role":"web"}`)
	j.Spec = json.RawMessage(`{"throttle":5}`)
	j.WakeAt = e.base.Add(48 * time.Hour)
	j.WaitFor = []string{"go-live", "abort"}
	j.Reason = "why"
	j.Error = "an error"
	j.Result = json.RawMessage(`[1,2]`)
	j.Progress = job.Progress{Done: 3, Total: 10, Message: "three"}
	j.Persist = job.PersistAlways
	j.OnError = job.OnErrorSuspend
	j.Started = e.base.Add(time.Second)
	j.Ended = e.base.Add(2 * time.Second)
	e.create(j)

	got := e.get("j-full")
	str := func(what, got, want string) {
		if got != want {
			t.Errorf("%s = %q, want %q", what, got, want)
		}
	}
	str("ID", got.ID, j.ID)
	str("Name", got.Name, j.Name)
	str("Workflow", got.Workflow, j.Workflow)
	str("Path", got.Path, j.Path)
	str("Digest", got.Digest, src.Digest)
	str("State", string(got.State), string(job.Queued))
	str("Persist", string(got.Persist), string(job.PersistAlways))
	str("OnError", string(got.OnError), string(job.OnErrorSuspend))
	str("Target", got.Target, j.Target)
	str("Reason", got.Reason, j.Reason)
	str("Error", got.Error, j.Error)
	str("Owner", got.Owner, "")
	str("ParentID", got.ParentID, "")
	str("Request", string(got.Request), "")
	sameJSON(t, "Input", got.Input, j.Input)
	sameJSON(t, "Vars", got.Vars, j.Vars)
	sameJSON(t, "Spec", got.Spec, j.Spec)
	sameJSON(t, "Result", got.Result, j.Result)
	if got.Timeout != j.Timeout {
		t.Errorf("Timeout = %v, want %v", got.Timeout, j.Timeout)
	}
	if !slices.Equal(got.WaitFor, j.WaitFor) {
		t.Errorf("WaitFor = %q, want %q", got.WaitFor, j.WaitFor)
	}
	if got.Progress != j.Progress {
		t.Errorf("Progress = %+v, want %+v", got.Progress, j.Progress)
	}
	if got.Steps != 0 || got.Runs != 0 {
		t.Errorf("Steps, Runs = %d, %d, want 0, 0", got.Steps, got.Runs)
	}
	sameTime(t, "Created", got.Created, j.Created)
	sameTime(t, "Updated", got.Updated, j.Updated)
	sameTime(t, "WakeAt", got.WakeAt, j.WakeAt)
	sameTime(t, "Started", got.Started, j.Started)
	sameTime(t, "Ended", got.Ended, j.Ended)
	sameTime(t, "LeaseUntil", got.LeaseUntil, time.Time{})

	// Absent JSON stays absent.
	e.create(e.newJob("j-bare"))
	bare := e.get("j-bare")
	if len(bare.Vars) != 0 || len(bare.Spec) != 0 || len(bare.Result) != 0 || len(bare.WaitFor) != 0 {
		t.Errorf("bare job has Vars %s Spec %s Result %s WaitFor %q, want none", bare.Vars, bare.Spec, bare.Result, bare.WaitFor)
	}
	if !bare.WakeAt.IsZero() || !bare.Started.IsZero() || !bare.Ended.IsZero() {
		t.Errorf("bare job times WakeAt %v Started %v Ended %v, want zero", bare.WakeAt, bare.Started, bare.Ended)
	}

	gotSrc, err := e.st.Source(e.ctx, src.Digest)
	if err != nil {
		t.Fatalf("Source: %v", err)
	}
	if gotSrc.Digest != src.Digest || gotSrc.Entry != src.Entry || len(gotSrc.Files) != len(src.Files) {
		t.Errorf("Source = %+v, want %+v", gotSrc, src)
	}
	for n, c := range src.Files {
		if gotSrc.Files[n] != c {
			t.Errorf("Source file %s = %q, want %q", n, gotSrc.Files[n], c)
		}
	}

	// A job may reference a stored source without passing it again; an
	// unknown digest is refused.
	shared := e.newJob("j-shared")
	if err := e.st.CreateJobs(e.ctx, nil, shared); err != nil {
		t.Fatalf("CreateJobs without source, known digest: %v", err)
	}
	orphan := e.newJob("j-orphan")
	orphan.Digest = source("never stored").Digest
	if err := e.st.CreateJobs(e.ctx, nil, orphan); err == nil {
		t.Errorf("CreateJobs with an unknown digest succeeded")
	}
	if _, err := e.st.Job(e.ctx, "j-orphan"); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("Job(j-orphan) after refused create: %v, want ErrNotFound", err)
	}

	_, err = e.st.Job(e.ctx, "nope")
	wantErr(t, "Job(nope)", err, job.ErrNotFound)
	_, err = e.st.Source(e.ctx, "nope")
	wantErr(t, "Source(nope)", err, job.ErrNotFound)

	// A second source is stored beside the first.
	other := source("other")
	j2 := e.newJob("j-other")
	j2.Digest = other.Digest
	if err := e.st.CreateJobs(e.ctx, other, j2); err != nil {
		t.Fatalf("CreateJobs other source: %v", err)
	}
	if s, err := e.st.Source(e.ctx, other.Digest); err != nil || s.Files["main.star"] != other.Files["main.star"] {
		t.Errorf("Source(other) = %+v, %v", s, err)
	}
	if s, err := e.st.Source(e.ctx, src.Digest); err != nil || s.Files["main.star"] != src.Files["main.star"] {
		t.Errorf("Source(first) after second = %+v, %v", s, err)
	}
}

func testCreateAtomic(t *testing.T, e *env) {
	e.add("dup")
	before := e.get("dup")
	a := e.newJob("a")
	again := e.newJob("dup")
	again.Name = "second"
	if err := e.st.CreateJobs(e.ctx, e.source(), a, again); err == nil {
		t.Fatalf("CreateJobs with an existing id succeeded")
	}
	if _, err := e.st.Job(e.ctx, "a"); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("Job(a) after a failed CreateJobs: %v, want ErrNotFound (one transaction)", err)
	}
	if got := e.get("dup"); got.Name != before.Name {
		t.Errorf("existing job renamed to %q by a failed create", got.Name)
	}

	// Parents and children in one call, children first: the store orders
	// them.
	p := e.newJob("p")
	c := e.newJob("p.c")
	c.ParentID = "p"
	if err := e.st.CreateJobs(e.ctx, e.source(), c, p); err != nil {
		t.Fatalf("CreateJobs(child, parent): %v", err)
	}
	if got := e.get("p.c"); got.ParentID != "p" {
		t.Errorf("child ParentID = %q, want p", got.ParentID)
	}
	// A child of an unknown parent is refused.
	lost := e.newJob("lost")
	lost.ParentID = "nobody"
	if err := e.st.CreateJobs(e.ctx, e.source(), lost); err == nil {
		t.Errorf("CreateJobs with an unknown parent succeeded")
	}
}

func testCreateOwned(t *testing.T, e *env) {
	j := e.newJob("owned")
	j.State = ""
	j.Owner = "engine-a"
	until := live().Truncate(time.Millisecond)
	j.LeaseUntil = until
	e.create(j)
	got := e.get("owned")
	if got.State != job.Running || got.Owner != "engine-a" {
		t.Fatalf("created with owner: state %s owner %q, want running engine-a", got.State, got.Owner)
	}
	sameTime(t, "LeaseUntil", got.LeaseUntil, until)
	if got.Runs < 1 {
		t.Errorf("Runs = %d, want at least 1", got.Runs)
	}
	if got.Started.IsZero() {
		t.Errorf("Started is zero for a job created running")
	}
	_, err := e.st.Claim(e.ctx, "owned", "engine-b", live(), "", []job.State{job.Queued, job.Running, job.Interrupted})
	wantErr(t, "Claim by another engine", err, job.ErrHeld)
	// Its creator applies without claiming.
	e.apply(&job.Update{JobID: "owned", Owner: "engine-a", Progress: &job.Progress{Done: 1}})
	if got := e.get("owned"); got.Progress.Done != 1 {
		t.Errorf("Progress after Apply = %+v", got.Progress)
	}
}

func testClaim(t *testing.T, e *env) {
	e.add("q")
	until := live().Truncate(time.Millisecond)
	j, err := e.st.Claim(e.ctx, "q", "A", until, "", []job.State{job.Queued})
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	check := func(what string, j *job.Job, runs int) {
		t.Helper()
		if j.State != job.Running || j.Owner != "A" || j.Runs != runs || j.Request != "" {
			t.Errorf("%s: state %s owner %q runs %d request %q, want running A %d none", what, j.State, j.Owner, j.Runs, j.Request, runs)
		}
		sameTime(t, what+" LeaseUntil", j.LeaseUntil, until)
		if j.Started.IsZero() {
			t.Errorf("%s: Started not set", what)
		}
	}
	check("claimed", j, 1)
	stored := e.get("q")
	check("stored", stored, 1)

	// Another engine, whatever states it accepts.
	_, err = e.st.Claim(e.ctx, "q", "B", live(), "", []job.State{job.Queued, job.Running, job.Interrupted})
	wantErr(t, "Claim held job", err, job.ErrHeld)
	_, err = e.st.Claim(e.ctx, "q", "B", live(), "C", []job.State{job.Interrupted})
	wantErr(t, "Claim held job stealing from another", err, job.ErrHeld)
	if got := e.get("q"); got.Owner != "A" || got.Runs != 1 {
		t.Errorf("after refused claims: owner %q runs %d, want A 1", got.Owner, got.Runs)
	}

	// The owner itself may claim again. (The pause lets a Started that
	// would wrongly move show.)
	time.Sleep(5 * time.Millisecond)
	j, err = e.st.Claim(e.ctx, "q", "A", until, "", []job.State{job.Running})
	if err != nil {
		t.Fatalf("re-Claim by owner: %v", err)
	}
	check("re-claimed", j, 2)
	sameTime(t, "Started after re-claim", j.Started, stored.Started)
	sameTime(t, "stored Started after re-claim", e.get("q").Started, stored.Started)

	_, err = e.st.Claim(e.ctx, "nope", "A", live(), "", []job.State{job.Queued})
	wantErr(t, "Claim unknown", err, job.ErrNotFound)

	e.add("done")
	e.finish("done", job.Completed)
	_, err = e.st.Claim(e.ctx, "done", "A", live(), "", []job.State{job.Queued, job.Interrupted})
	wantErr(t, "Claim completed", err, job.ErrWrongState, "completed")

	e.add("q2")
	_, err = e.st.Claim(e.ctx, "q2", "A", live(), "", []job.State{job.Suspended, job.Waiting})
	wantErr(t, "Claim queued as suspended/waiting", err, job.ErrWrongState, "queued")
	if got := e.get("q2"); got.State != job.Queued || got.Owner != "" || got.Runs != 0 {
		t.Errorf("after wrong-state claim: %s %q runs %d", got.State, got.Owner, got.Runs)
	}

	// Claim clears a pending request.
	e.add("r")
	e.claim("r", "A", live())
	if _, err := e.st.Request(e.ctx, "r", job.ActionSuspend, "", time.Now(), func(*job.Job) bool { return true }); err != nil {
		t.Fatalf("Request: %v", err)
	}
	if j := e.claim("r", "A", live(), job.Running); j.Request != "" {
		t.Errorf("Claim returned Request %q, want none", j.Request)
	}
	if got := e.get("r"); got.Request != "" {
		t.Errorf("stored Request after claim = %q, want none", got.Request)
	}

	// A waiting job is claimed when its state is asked for.
	e.add("w")
	e.claim("w", "A", live())
	e.park("w", "A", time.Now(), "x")
	if j := e.claim("w", "B", live(), job.Waiting); j.Owner != "B" || j.State != job.Running || j.Runs != 2 {
		t.Errorf("claim waiting: owner %q state %s runs %d", j.Owner, j.State, j.Runs)
	}
}

func testClaimExpiredAndSteal(t *testing.T, e *env) {
	e.add("x")
	first := e.claim("x", "A", expired())
	// Expired: the job is interrupted, not queued nor held.
	_, err := e.st.Claim(e.ctx, "x", "B", live(), "", []job.State{job.Queued})
	wantErr(t, "Claim expired job as queued", err, job.ErrWrongState, "interrupted")
	j, err := e.st.Claim(e.ctx, "x", "B", live(), "", []job.State{job.Interrupted})
	if err != nil {
		t.Fatalf("Claim expired job as interrupted: %v", err)
	}
	if j.Owner != "B" || j.Runs != 2 || j.State != job.Running {
		t.Errorf("claimed: owner %q runs %d state %s, want B 2 running", j.Owner, j.Runs, j.State)
	}
	sameTime(t, "Started kept", j.Started, first.Started)
	sameTime(t, "stored Started kept", e.get("x").Started, first.Started)
	err = e.st.Apply(e.ctx, &job.Update{JobID: "x", Owner: "A", Progress: &job.Progress{Done: 1}})
	wantErr(t, "Apply by the expired owner", err, job.ErrLeaseLost)

	// Steal from a live owner known dead.
	e.add("s")
	e.claim("s", "dead", live())
	j, err = e.st.Claim(e.ctx, "s", "C", live(), "dead", []job.State{job.Interrupted})
	if err != nil {
		t.Fatalf("Claim stealing from dead: %v", err)
	}
	if j.Owner != "C" {
		t.Errorf("stolen job owner %q, want C", j.Owner)
	}
	err = e.st.Apply(e.ctx, &job.Update{JobID: "s", Owner: "dead", Progress: &job.Progress{Done: 1}})
	wantErr(t, "Apply by the robbed owner", err, job.ErrLeaseLost)
	// Steal needs Interrupted among the states.
	e.add("s2")
	e.claim("s2", "dead", live())
	_, err = e.st.Claim(e.ctx, "s2", "C", live(), "dead", []job.State{job.Queued})
	wantErr(t, "steal without Interrupted", err, job.ErrWrongState)
}

func testClaimRace(t *testing.T, e *env) {
	e.add("race")
	const n = 16
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, errs[i] = e.st.Claim(e.ctx, "race", fmt.Sprintf("engine-%d", i), live(), "", []job.State{job.Queued})
		})
	}
	wg.Wait()
	won := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if won >= 0 {
				t.Errorf("engines %d and %d both claimed the job", won, i)
			}
			won = i
		case !errors.Is(err, job.ErrHeld):
			t.Errorf("engine %d: %v, want ErrHeld", i, err)
		}
	}
	if won < 0 {
		t.Fatalf("no engine claimed the job")
	}
	if got := e.get("race"); got.Owner != fmt.Sprintf("engine-%d", won) || got.Runs != 1 {
		t.Errorf("stored owner %q runs %d, want engine-%d 1", got.Owner, got.Runs, won)
	}
}

func testApplyFields(t *testing.T, e *env) {
	e.add("j")
	e.claim("j", "A", live())
	wake := e.base.Add(24 * time.Hour)
	ended := e.base.Add(time.Minute)
	e.apply(&job.Update{
		JobID:    "j",
		Owner:    "A",
		State:    ptr(job.Waiting),
		WakeAt:   &wake,
		WaitFor:  &[]string{"approve"},
		Reason:   ptr("waiting for approval"),
		Error:    ptr("transient"),
		Result:   json.RawMessage(`{"ok":true}`),
		Progress: &job.Progress{Done: 2, Total: 4, Message: "half"},
		Ended:    &ended,
	})
	got := e.get("j")
	if got.State != job.Waiting || got.Reason != "waiting for approval" || got.Error != "transient" || got.Owner != "A" {
		t.Errorf("after Apply: state %s reason %q error %q owner %q", got.State, got.Reason, got.Error, got.Owner)
	}
	sameTime(t, "WakeAt", got.WakeAt, wake)
	sameTime(t, "Ended", got.Ended, ended)
	sameJSON(t, "Result", got.Result, json.RawMessage(`{"ok":true}`))
	if !slices.Equal(got.WaitFor, []string{"approve"}) {
		t.Errorf("WaitFor = %q", got.WaitFor)
	}
	if got.Progress != (job.Progress{Done: 2, Total: 4, Message: "half"}) {
		t.Errorf("Progress = %+v", got.Progress)
	}
	if !got.Updated.After(e.base) {
		t.Errorf("Updated %v not moved by Apply", got.Updated)
	}

	// Fields left nil are unchanged.
	e.apply(&job.Update{JobID: "j", Owner: "A"})
	again := e.get("j")
	if again.State != got.State || again.Reason != got.Reason || again.Error != got.Error ||
		!slices.Equal(again.WaitFor, got.WaitFor) || again.Progress != got.Progress || again.Owner != "A" {
		t.Errorf("empty Apply changed the job: %+v", again)
	}
	sameTime(t, "WakeAt after empty Apply", again.WakeAt, wake)
	sameJSON(t, "Result after empty Apply", again.Result, got.Result)

	// Set to empty values.
	e.apply(&job.Update{JobID: "j", Owner: "A", State: ptr(job.Running), WakeAt: &time.Time{}, WaitFor: &[]string{},
		Reason: ptr(""), Error: ptr(""), Ended: &time.Time{}})
	cleared := e.get("j")
	if cleared.State != job.Running || cleared.Reason != "" || cleared.Error != "" || len(cleared.WaitFor) != 0 ||
		!cleared.WakeAt.IsZero() || !cleared.Ended.IsZero() {
		t.Errorf("clearing Apply: %+v", cleared)
	}

	// Release gives up the lease; the owner cannot write after it.
	e.apply(&job.Update{JobID: "j", Owner: "A", State: ptr(job.Completed), Release: true})
	rel := e.get("j")
	if rel.Owner != "" || !rel.LeaseUntil.IsZero() || rel.State != job.Completed {
		t.Errorf("after Release: owner %q lease %v state %s", rel.Owner, rel.LeaseUntil, rel.State)
	}
	err := e.st.Apply(e.ctx, &job.Update{JobID: "j", Owner: "A", State: ptr(job.Failed)})
	wantErr(t, "Apply after Release", err, job.ErrLeaseLost)
	if got := e.get("j"); got.State != job.Completed {
		t.Errorf("state after refused Apply = %s", got.State)
	}
}

func testApplySteps(t *testing.T, e *env) {
	e.add("j")
	e.claim("j", "A", live())
	t0 := e.base.Add(time.Second)
	e.apply(&job.Update{JobID: "j", Owner: "A", Steps: []job.Step{
		{Key: "1", Activity: "sh", Digest: "d1", Status: job.StepDone, Result: json.RawMessage(`{"code":0}`), Attempts: 1,
			Host: "web1", Engine: "ctl1:4242:99:abc", Position: "main.star:3:5", Started: t0, Ended: t0.Add(time.Second)},
		{Key: "2", Activity: "sleep", Digest: "d2", Status: job.StepPending, Data: json.RawMessage(`{"until":5}`), Started: t0},
		{Key: "3/b1/1", Activity: "http", Digest: "d3", Status: job.StepFailed, Error: "boom", Attempts: 3, Started: t0},
	}})
	if got := e.get("j").Steps; got != 1 {
		t.Errorf("Steps = %d after one done step, want 1", got)
	}
	steps, err := e.st.Journal(e.ctx, "j")
	if err != nil {
		t.Fatalf("Journal: %v", err)
	}
	if len(steps) != 3 {
		t.Fatalf("Journal has %d steps, want 3", len(steps))
	}
	s1 := steps[0]
	if s1.Key != "1" || s1.Activity != "sh" || s1.Digest != "d1" || s1.Status != job.StepDone || s1.Attempts != 1 ||
		s1.Host != "web1" || s1.Engine != "ctl1:4242:99:abc" || s1.Position != "main.star:3:5" {
		t.Errorf("step 1 = %+v", s1)
	}
	sameJSON(t, "step 1 result", s1.Result, json.RawMessage(`{"code":0}`))
	sameTime(t, "step 1 started", s1.Started, t0)
	sameTime(t, "step 1 ended", s1.Ended, t0.Add(time.Second))
	sameJSON(t, "step 2 data", steps[1].Data, json.RawMessage(`{"until":5}`))
	if !steps[1].Ended.IsZero() || steps[1].Status != job.StepPending {
		t.Errorf("step 2 = %+v", steps[1])
	}
	if steps[2].Key != "3/b1/1" || steps[2].Error != "boom" || steps[2].Attempts != 3 || steps[2].Status != job.StepFailed {
		t.Errorf("step 3 = %+v", steps[2])
	}

	// Upsert by key: step 2 completes, step 1 is rewritten, a new step 4.
	e.apply(&job.Update{JobID: "j", Owner: "A", Steps: []job.Step{
		{Key: "2", Activity: "sleep", Digest: "d2", Status: job.StepDone, Started: t0, Ended: t0.Add(time.Minute)},
		{Key: "1", Activity: "sh", Digest: "d1", Status: job.StepDone, Result: json.RawMessage(`{"code":1}`), Attempts: 2, Started: t0},
		{Key: "4", Activity: "now", Status: job.StepDone, Result: json.RawMessage(`"2024-01-01"`), Started: t0},
	}})
	if got := e.get("j").Steps; got != 3 {
		t.Errorf("Steps = %d after steps 1, 2, 4 done, want 3", got)
	}
	steps, err = e.st.Journal(e.ctx, "j")
	if err != nil {
		t.Fatalf("Journal: %v", err)
	}
	var keys []string
	for _, s := range steps {
		keys = append(keys, s.Key)
	}
	if !slices.Equal(keys, []string{"1", "2", "3/b1/1", "4"}) {
		t.Errorf("journal keys %q, want 1 2 3/b1/1 4 (first-journaled order)", keys)
	}
	if steps[0].Attempts != 2 || steps[0].Host != "" {
		t.Errorf("rewritten step 1 = %+v, want attempts 2 and no host", steps[0])
	}
	sameJSON(t, "rewritten step 1 result", steps[0].Result, json.RawMessage(`{"code":1}`))
	if len(steps[1].Data) != 0 || steps[1].Status != job.StepDone {
		t.Errorf("completed step 2 = %+v, want done without data", steps[1])
	}
	// A done step going back to pending stops counting.
	e.apply(&job.Update{JobID: "j", Owner: "A", Steps: []job.Step{{Key: "4", Activity: "now", Status: job.StepPending, Started: t0}}})
	if got := e.get("j").Steps; got != 2 {
		t.Errorf("Steps = %d after step 4 went pending, want 2", got)
	}
	// Unknown job: empty journal.
	if steps, err := e.st.Journal(e.ctx, "nope"); len(steps) != 0 || (err != nil && !errors.Is(err, job.ErrNotFound)) {
		t.Errorf("Journal(nope) = %v, %v", steps, err)
	}
}

func testApplyFencing(t *testing.T, e *env) {
	e.add("j")
	e.claim("j", "A", live())
	e.park("j", "A", time.Time{}, "go")
	if _, err := e.st.Signal(e.ctx, &job.Signal{JobID: "j", Name: "go", Sender: "op"}); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	sigs, err := e.st.Signals(e.ctx, "j")
	if err != nil || len(sigs) != 1 {
		t.Fatalf("Signals = %v, %v", sigs, err)
	}
	e.claim("j", "A", live())
	// B steals the job from A, believed dead.
	if _, err := e.st.Claim(e.ctx, "j", "B", live(), "A", []job.State{job.Interrupted}); err != nil {
		t.Fatalf("steal: %v", err)
	}
	before := e.get("j")
	other := source("upgrade")
	if err := e.st.CreateJobs(e.ctx, other); err != nil {
		t.Fatalf("store a source: %v", err)
	}
	update := func(owner string) *job.Update {
		return &job.Update{
			JobID:    "j",
			Owner:    owner,
			Steps:    []job.Step{{Key: "1", Activity: "sh", Status: job.StepDone, Started: e.base}},
			Records:  []job.Record{{JobID: "j", Stream: job.Output, Key: "1/emit/0", Value: json.RawMessage(`1`)}},
			Consume:  []int64{sigs[0].ID},
			State:    ptr(job.Completed),
			Result:   json.RawMessage(`"done"`),
			Progress: &job.Progress{Done: 1, Total: 1},
			Reason:   ptr("r"),
			Release:  true,
			Digest:   other.Digest,
		}
	}
	err = e.st.Apply(e.ctx, update("A"))
	wantErr(t, "Apply by the old owner", err, job.ErrLeaseLost)
	after := e.get("j")
	if after.State != job.Running || after.Owner != "B" || len(after.Result) != 0 || after.Progress != before.Progress ||
		after.Reason != before.Reason || after.Steps != 0 || after.Digest != before.Digest {
		t.Errorf("fenced-out Apply changed the job: %+v", after)
	}
	if steps, _ := e.st.Journal(e.ctx, "j"); len(steps) != 0 {
		t.Errorf("fenced-out Apply wrote %d steps", len(steps))
	}
	if recs, _ := e.st.Records(e.ctx, "j", job.Output, 0, 0); len(recs) != 0 {
		t.Errorf("fenced-out Apply wrote %d records", len(recs))
	}
	if s, _ := e.st.Signals(e.ctx, "j"); len(s) != 1 {
		t.Errorf("fenced-out Apply consumed signals: %d left, want 1", len(s))
	}

	err = e.st.Apply(e.ctx, update(""))
	wantErr(t, "Apply without owner", err, job.ErrLeaseLost)
	e.add("free")
	err = e.st.Apply(e.ctx, &job.Update{JobID: "free", Owner: "", State: ptr(job.Completed)})
	wantErr(t, "Apply without owner to a free job", err, job.ErrLeaseLost)
	if got := e.get("free"); got.State != job.Queued {
		t.Errorf("Apply without owner changed a free job to %s", got.State)
	}
	err = e.st.Apply(e.ctx, &job.Update{JobID: "nope", Owner: "A"})
	wantErr(t, "Apply to unknown job", err, job.ErrLeaseLost)

	// The holder's identical update goes through whole.
	e.apply(update("B"))
	done := e.get("j")
	if done.State != job.Completed || done.Owner != "" || done.Steps != 1 || done.Reason != "r" || done.Digest != other.Digest {
		t.Errorf("holder's Apply: %+v", done)
	}
	sameJSON(t, "Result", done.Result, json.RawMessage(`"done"`))
	if recs, _ := e.st.Records(e.ctx, "j", job.Output, 0, 0); len(recs) != 1 {
		t.Errorf("holder's Apply wrote %d records, want 1", len(recs))
	}
	if s, _ := e.st.Signals(e.ctx, "j"); len(s) != 0 {
		t.Errorf("holder's Apply left %d signals, want 0", len(s))
	}
}

// testApplyDigest moves a job to another source, as resume --upgrade does.
func testApplyDigest(t *testing.T, e *env) {
	e.add("j")
	old := e.get("j").Digest
	e.claim("j", "A", live())
	v2 := source("v2")
	if err := e.st.CreateJobs(e.ctx, v2); err != nil {
		t.Fatalf("CreateJobs(source only): %v", err)
	}
	if s, err := e.st.Source(e.ctx, v2.Digest); err != nil || s.Entry != v2.Entry {
		t.Fatalf("source stored without jobs: %+v, %v", s, err)
	}
	// Unknown source: the whole update fails.
	err := e.st.Apply(e.ctx, &job.Update{JobID: "j", Owner: "A", Digest: source("never stored").Digest,
		Steps:    []job.Step{{Key: "1", Activity: "sh", Status: job.StepDone, Started: e.base}},
		Progress: &job.Progress{Done: 9}})
	if err == nil {
		t.Fatalf("Apply with an unknown digest succeeded")
	}
	got := e.get("j")
	if got.Digest != old || got.Steps != 0 || got.Progress.Done != 0 {
		t.Errorf("failed Apply left digest %.12s steps %d progress %v", got.Digest, got.Steps, got.Progress)
	}
	if steps, _ := e.st.Journal(e.ctx, "j"); len(steps) != 0 {
		t.Errorf("failed Apply wrote %d steps", len(steps))
	}
	e.apply(&job.Update{JobID: "j", Owner: "A", Digest: v2.Digest})
	if got := e.get("j"); got.Digest != v2.Digest {
		t.Errorf("Digest = %.12s, want %.12s", got.Digest, v2.Digest)
	}
	// An empty Digest leaves it.
	e.apply(&job.Update{JobID: "j", Owner: "A", Progress: &job.Progress{Done: 1}})
	if got := e.get("j"); got.Digest != v2.Digest {
		t.Errorf("Digest after an Apply without one = %.12s, want %.12s", got.Digest, v2.Digest)
	}
}

// testApplyDuplicateKeys journals a step twice and emits a record twice
// in one update, as an engine that batches its writes may: the result is
// what two updates in a row would leave.
func testApplyDuplicateKeys(t *testing.T, e *env) {
	e.add("j")
	e.claim("j", "A", live())
	t0 := e.base.Add(time.Second)
	e.apply(&job.Update{JobID: "j", Owner: "A",
		Steps: []job.Step{
			{Key: "1", Activity: "sh", Status: job.StepPending, Data: json.RawMessage(`{"pid":1}`), Started: t0},
			{Key: "2", Activity: "sh", Status: job.StepDone, Started: t0},
			{Key: "1", Activity: "sh", Status: job.StepDone, Result: json.RawMessage(`{"code":0}`), Attempts: 1, Started: t0, Ended: t0},
		},
		Records: []job.Record{
			{Stream: job.Log, Key: "1.o1", Text: "first"},
			{Stream: job.Log, Key: "1.o1", Text: "second"},
		}})
	steps, err := e.st.Journal(e.ctx, "j")
	if err != nil || len(steps) != 2 {
		t.Fatalf("Journal = %+v, %v; want 2 steps", steps, err)
	}
	if steps[0].Key != "1" || steps[0].Status != job.StepDone || len(steps[0].Data) != 0 || steps[0].Attempts != 1 || steps[1].Key != "2" {
		t.Errorf("journal = %+v, want step 1 done (its last write) before step 2", steps)
	}
	sameJSON(t, "step 1 result", steps[0].Result, json.RawMessage(`{"code":0}`))
	if got := e.get("j").Steps; got != 2 {
		t.Errorf("Steps = %d, want 2", got)
	}
	recs, err := e.st.Records(e.ctx, "j", job.Log, 0, 0)
	if err != nil || len(recs) != 1 || recs[0].Text != "first" {
		t.Errorf("log = %+v, %v; want the first record only", recs, err)
	}
}

// testTextBytes stores text with NUL and bytes that are not UTF-8, as
// command output may have, in every place command output goes.
func testTextBytes(t *testing.T, e *env) {
	const raw = "out\x00put \xff\xfe end"
	// What a store that cannot keep the bytes may keep instead.
	replaced := strings.ReplaceAll(strings.ToValidUTF8(raw, "\uFFFD"), "\x00", "\uFFFD")
	same := func(what, got string) {
		t.Helper()
		if got != raw && got != replaced {
			t.Errorf("%s = %q, want %q or %q", what, got, raw, replaced)
		}
	}
	e.add("j")
	e.claim("j", "A", live())
	err := e.st.Apply(e.ctx, &job.Update{JobID: "j", Owner: "A", Error: ptr(raw), Reason: ptr(raw),
		Progress: &job.Progress{Done: 1, Message: raw},
		Result:   json.RawMessage(`{"stdout":"a\u0000b"}`),
		Steps:    []job.Step{{Key: "1", Activity: "sh", Status: job.StepFailed, Error: raw, Host: "web1", Started: e.base}},
		Records:  []job.Record{{Stream: job.Log, Key: "1.o1", Text: raw, Host: "web1"}}})
	if err != nil {
		t.Fatalf("Apply with such text: %v", err)
	}
	if err := e.st.AppendRecords(e.ctx, []job.Record{{JobID: "j", Stream: job.Log, Key: "1.e1", Text: raw}}); err != nil {
		t.Fatalf("AppendRecords with such text: %v", err)
	}
	j := e.get("j")
	same("Error", j.Error)
	same("Reason", j.Reason)
	same("Progress.Message", j.Progress.Message)
	sameJSON(t, "Result", j.Result, json.RawMessage(`{"stdout":"a\u0000b"}`))
	steps, err := e.st.Journal(e.ctx, "j")
	if err != nil || len(steps) != 1 {
		t.Fatalf("Journal = %+v, %v", steps, err)
	}
	same("step Error", steps[0].Error)
	recs, err := e.st.Records(e.ctx, "j", job.Log, 0, 0)
	if err != nil || len(recs) != 2 {
		t.Fatalf("Records = %+v, %v", recs, err)
	}
	same("record Text", recs[0].Text)
	same("appended record Text", recs[1].Text)
}

func testRecords(t *testing.T, e *env) {
	e.add("j")
	e.add("k")
	t0 := e.base.Add(time.Second)
	recs := []job.Record{
		{JobID: "j", Stream: job.Output, Key: "1/emit/0", Time: t0, Host: "web1", Value: json.RawMessage(`{"a":1}`)},
		{JobID: "j", Stream: job.Log, Key: "1/print/0", Time: t0, Text: "hello"},
		{JobID: "k", Stream: job.Output, Key: "1/emit/0", Time: t0, Value: json.RawMessage(`"k"`)},
		{JobID: "j", Stream: job.Output, Key: "2/emit/0", Time: t0.Add(time.Second), Value: json.RawMessage(`2`)},
	}
	if err := e.st.AppendRecords(e.ctx, recs); err != nil {
		t.Fatalf("AppendRecords: %v", err)
	}
	out, err := e.st.Records(e.ctx, "j", job.Output, 0, 0)
	if err != nil {
		t.Fatalf("Records: %v", err)
	}
	if len(out) != 2 || out[0].Key != "1/emit/0" || out[1].Key != "2/emit/0" {
		t.Fatalf("output = %+v", out)
	}
	if out[0].Seq <= 0 || out[1].Seq <= out[0].Seq {
		t.Errorf("seqs %d, %d not increasing from 1", out[0].Seq, out[1].Seq)
	}
	if out[0].JobID != "j" || out[0].Stream != job.Output || out[0].Host != "web1" {
		t.Errorf("record = %+v", out[0])
	}
	sameJSON(t, "value", out[0].Value, json.RawMessage(`{"a":1}`))
	sameTime(t, "time", out[0].Time, t0)
	logs, err := e.st.Records(e.ctx, "j", job.Log, 0, 0)
	if err != nil || len(logs) != 1 || logs[0].Text != "hello" {
		t.Errorf("log = %+v, %v", logs, err)
	}
	if ko, _ := e.st.Records(e.ctx, "k", job.Output, 0, 0); len(ko) != 1 {
		t.Errorf("job k output has %d records, want 1", len(ko))
	}

	// Replayed records are ignored, whatever they now say.
	dup := []job.Record{
		{JobID: "j", Stream: job.Output, Key: "1/emit/0", Value: json.RawMessage(`"changed"`)},
		{JobID: "j", Stream: job.Output, Key: "3/emit/0", Value: json.RawMessage(`3`)},
	}
	if err := e.st.AppendRecords(e.ctx, dup); err != nil {
		t.Fatalf("AppendRecords again: %v", err)
	}
	e.claim("j", "A", live())
	e.apply(&job.Update{JobID: "j", Owner: "A", Records: []job.Record{
		{Stream: job.Output, Key: "2/emit/0", Value: json.RawMessage(`"changed"`)},
		{Stream: job.Log, Key: "4/print/0", Text: "via apply"},
	}})
	out, _ = e.st.Records(e.ctx, "j", job.Output, 0, 0)
	if len(out) != 3 {
		t.Fatalf("output after replays has %d records, want 3: %+v", len(out), out)
	}
	sameJSON(t, "replayed value", out[0].Value, json.RawMessage(`{"a":1}`))
	sameJSON(t, "replayed value via Apply", out[1].Value, json.RawMessage(`2`))
	if out[2].Key != "3/emit/0" || out[2].Seq <= out[1].Seq {
		t.Errorf("third record %+v after %d", out[2], out[1].Seq)
	}
	logs, _ = e.st.Records(e.ctx, "j", job.Log, 0, 0)
	if len(logs) != 2 || logs[1].Text != "via apply" || logs[1].JobID != "j" {
		t.Errorf("log after Apply = %+v", logs)
	}

	// Paging.
	page, _ := e.st.Records(e.ctx, "j", job.Output, out[0].Seq, 0)
	if len(page) != 2 || page[0].Seq != out[1].Seq {
		t.Errorf("Records after %d = %+v", out[0].Seq, page)
	}
	page, _ = e.st.Records(e.ctx, "j", job.Output, 0, 2)
	if len(page) != 2 || page[1].Seq != out[1].Seq {
		t.Errorf("Records limit 2 = %+v", page)
	}
	page, _ = e.st.Records(e.ctx, "j", job.Output, out[2].Seq, 0)
	if len(page) != 0 {
		t.Errorf("Records after the last = %+v", page)
	}

	if err := e.st.AppendRecords(e.ctx, []job.Record{{JobID: "nope", Stream: job.Log, Key: "1", Text: "x"}}); err == nil {
		t.Errorf("AppendRecords to an unknown job succeeded")
	}
}

func testSignals(t *testing.T, e *env) {
	_, err := e.st.Signal(e.ctx, &job.Signal{JobID: "nope", Name: "go"})
	wantErr(t, "Signal unknown job", err, job.ErrNotFound)

	e.add("j")
	_, err = e.st.Signal(e.ctx, &job.Signal{JobID: "j", Name: "go"})
	wantErr(t, "Signal queued job", err, job.ErrNotWaiting, "queued")

	e.claim("j", "A", live())
	e.park("j", "A", time.Time{}, "approve", "abort")
	_, err = e.st.Signal(e.ctx, &job.Signal{JobID: "j", Name: "go"})
	wantErr(t, "Signal for another name", err, job.ErrNotWaiting, "approve")
	if sigs, _ := e.st.Signals(e.ctx, "j"); len(sigs) != 0 {
		t.Errorf("refused signal stored: %+v", sigs)
	}
	if got := e.get("j"); got.State != job.Waiting {
		t.Errorf("refused signal changed state to %s", got.State)
	}

	at := e.base.Add(time.Minute)
	sig := &job.Signal{JobID: "j", Name: "approve", Payload: json.RawMessage(`{"by":"alice"}`), Sender: "alice", Time: at}
	j, err := e.st.Signal(e.ctx, sig)
	if err != nil {
		t.Fatalf("Signal: %v", err)
	}
	if j.State != job.Queued || e.get("j").State != job.Queued {
		t.Errorf("signaled job state %s (stored %s), want queued", j.State, e.get("j").State)
	}
	if sig.ID <= 0 {
		t.Errorf("signal ID = %d, want it set", sig.ID)
	}
	_, err = e.st.Signal(e.ctx, &job.Signal{JobID: "j", Name: "approve"})
	wantErr(t, "second Signal once queued", err, job.ErrNotWaiting, "queued")

	e.claim("j", "A", live())
	e.park("j", "A", time.Time{}, "abort")
	if _, err := e.st.Signal(e.ctx, &job.Signal{JobID: "j", Name: "abort", Sender: "bob"}); err != nil {
		t.Fatalf("Signal abort: %v", err)
	}
	sigs, err := e.st.Signals(e.ctx, "j")
	if err != nil || len(sigs) != 2 {
		t.Fatalf("Signals = %+v, %v", sigs, err)
	}
	if sigs[0].Name != "approve" || sigs[1].Name != "abort" || sigs[0].ID != sig.ID || sigs[1].ID <= sigs[0].ID {
		t.Errorf("signals out of order: %+v", sigs)
	}
	if sigs[0].JobID != "j" || sigs[0].Sender != "alice" {
		t.Errorf("signal = %+v", sigs[0])
	}
	sameJSON(t, "payload", sigs[0].Payload, json.RawMessage(`{"by":"alice"}`))
	sameTime(t, "signal time", sigs[0].Time, at)

	// Consumed by the holder's Apply; a signal of another job is not.
	e.add("other")
	e.claim("other", "O", live())
	e.park("other", "O", time.Time{}, "approve")
	if _, err := e.st.Signal(e.ctx, &job.Signal{JobID: "other", Name: "approve"}); err != nil {
		t.Fatalf("Signal other: %v", err)
	}
	otherSigs, _ := e.st.Signals(e.ctx, "other")
	e.claim("j", "A", live())
	e.apply(&job.Update{JobID: "j", Owner: "A", Consume: []int64{sigs[0].ID, otherSigs[0].ID}})
	left, _ := e.st.Signals(e.ctx, "j")
	if len(left) != 1 || left[0].ID != sigs[1].ID {
		t.Errorf("after consuming the first: %+v", left)
	}
	if o, _ := e.st.Signals(e.ctx, "other"); len(o) != 1 {
		t.Errorf("Apply of j consumed a signal of another job")
	}
}

func held(j *job.Job) bool { return j.Owner != "" && j.LeaseUntil.After(time.Now()) }

func testRequestUnheld(t *testing.T, e *env) {
	now := time.Now()
	e.add("q")
	j, err := e.st.Request(e.ctx, "q", job.ActionSuspend, "maintenance", now, held)
	if err != nil {
		t.Fatalf("suspend queued: %v", err)
	}
	if j.State != job.Suspended || j.Reason != "maintenance" {
		t.Errorf("suspended: state %s reason %q", j.State, j.Reason)
	}
	if got := e.get("q"); got.State != job.Suspended || got.Reason != "maintenance" || got.Request != "" {
		t.Errorf("stored: state %s reason %q request %q", got.State, got.Reason, got.Request)
	}
	if j, err := e.st.Request(e.ctx, "q", job.ActionSuspend, "again", now, held); err != nil || j.State != job.Suspended {
		t.Errorf("suspend suspended: %v, %v; want a no-op", j, err)
	}
	if got := e.get("q"); got.State != job.Suspended || got.Reason != "maintenance" {
		t.Errorf("suspend of a suspended job changed it: state %s reason %q", got.State, got.Reason)
	}
	j, err = e.st.Request(e.ctx, "q", job.ActionStop, "abandoned", now, held)
	if err != nil {
		t.Fatalf("stop suspended: %v", err)
	}
	if got := e.get("q"); got.State != job.Stopped || got.Reason != "abandoned" || got.Ended.IsZero() || j.State != job.Stopped {
		t.Errorf("stopped: state %s reason %q ended %v", got.State, got.Reason, got.Ended)
	}
	_, err = e.st.Request(e.ctx, "q", job.ActionStop, "", now, held)
	wantErr(t, "stop stopped", err, job.ErrWrongState, "stopped")
	_, err = e.st.Request(e.ctx, "q", job.ActionSuspend, "", now, held)
	wantErr(t, "suspend stopped", err, job.ErrWrongState, "stopped")

	e.add("c")
	e.finish("c", job.Completed)
	_, err = e.st.Request(e.ctx, "c", job.ActionStop, "", now, held)
	wantErr(t, "stop completed", err, job.ErrWrongState, "completed")

	e.add("w")
	e.claim("w", "A", live())
	e.park("w", "A", e.base.Add(time.Hour), "x")
	if j, err := e.st.Request(e.ctx, "w", job.ActionSuspend, "", now, held); err != nil || j.State != job.Suspended {
		t.Errorf("suspend waiting: %v, %v", j, err)
	}

	// An interrupted job is nobody's: changed at once, its lease dropped.
	e.add("i")
	e.claim("i", "A", expired())
	j, err = e.st.Request(e.ctx, "i", job.ActionSuspend, "", time.Now(), held)
	if err != nil {
		t.Fatalf("suspend interrupted: %v", err)
	}
	if got := e.get("i"); got.State != job.Suspended || got.Owner != "" || !got.LeaseUntil.IsZero() {
		t.Errorf("suspended interrupted job: state %s owner %q lease %v", got.State, got.Owner, got.LeaseUntil)
	}
	err = e.st.Apply(e.ctx, &job.Update{JobID: "i", Owner: "A", State: ptr(job.Completed)})
	wantErr(t, "Apply by the owner of a suspended interrupted job", err, job.ErrLeaseLost)

	e.add("i2")
	e.claim("i2", "A", expired())
	if _, err := e.st.Request(e.ctx, "i2", job.ActionStop, "", time.Now(), held); err != nil {
		t.Fatalf("stop interrupted: %v", err)
	}
	if got := e.get("i2"); got.State != job.Stopped || got.Owner != "" {
		t.Errorf("stopped interrupted job: state %s owner %q", got.State, got.Owner)
	}

	_, err = e.st.Request(e.ctx, "nope", job.ActionStop, "", now, held)
	wantErr(t, "Request unknown job", err, job.ErrNotFound)
}

func testRequestHeld(t *testing.T, e *env) {
	e.add("h")
	e.claim("h", "A", live())
	var seen *job.Job
	j, err := e.st.Request(e.ctx, "h", job.ActionSuspend, "please", time.Now(), func(j *job.Job) bool {
		seen = j
		return held(j)
	})
	if err != nil {
		t.Fatalf("suspend held: %v", err)
	}
	if seen == nil || seen.Owner != "A" || seen.State != job.Running {
		t.Fatalf("held() saw %+v, want the stored row owned by A", seen)
	}
	if j.State != job.Running || j.Request != job.ActionSuspend {
		t.Errorf("held job after request: state %s request %q", j.State, j.Request)
	}
	if got := e.get("h"); got.State != job.Running || got.Request != job.ActionSuspend || got.Owner != "A" {
		t.Errorf("stored: state %s request %q owner %q", got.State, got.Request, got.Owner)
	}
	// A stop overrides a pending suspend; a suspend does not override a stop.
	if _, err := e.st.Request(e.ctx, "h", job.ActionStop, "", time.Now(), held); err != nil {
		t.Fatalf("stop held: %v", err)
	}
	if _, err := e.st.Request(e.ctx, "h", job.ActionSuspend, "", time.Now(), held); err != nil {
		t.Fatalf("suspend held after stop: %v", err)
	}
	if got := e.get("h"); got.Request != job.ActionStop {
		t.Errorf("pending request %q, want stop", got.Request)
	}
	reqs, err := e.st.Renew(e.ctx, "A", live())
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if len(reqs) != 1 || reqs["h"] != job.ActionStop {
		t.Errorf("Renew = %v, want h: stop", reqs)
	}
	// Pending until the engine clears it.
	if reqs, _ := e.st.Renew(e.ctx, "A", live()); reqs["h"] != job.ActionStop {
		t.Errorf("second Renew = %v, want h: stop still", reqs)
	}
	e.apply(&job.Update{JobID: "h", Owner: "A", ClearRequest: true, State: ptr(job.Stopped), Release: true})
	if reqs, _ := e.st.Renew(e.ctx, "A", live()); len(reqs) != 0 {
		t.Errorf("Renew after ClearRequest = %v", reqs)
	}
	if got := e.get("h"); got.Request != "" {
		t.Errorf("Request after ClearRequest = %q", got.Request)
	}
}

func testRenew(t *testing.T, e *env) {
	for _, id := range []string{"a1", "a2", "a3", "b1", "free"} {
		e.add(id)
	}
	first := live().Truncate(time.Millisecond)
	e.claim("a1", "A", first)
	e.claim("a2", "A", expired())
	e.claim("a3", "A", first)
	e.apply(&job.Update{JobID: "a3", Owner: "A", Release: true})
	e.claim("b1", "B", first)
	until := first.Add(time.Hour)
	reqs, err := e.st.Renew(e.ctx, "A", until)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if len(reqs) != 0 {
		t.Errorf("Renew without requests = %v", reqs)
	}
	sameTime(t, "a1 lease", e.get("a1").LeaseUntil, until)
	sameTime(t, "a2 lease (expired, still A's)", e.get("a2").LeaseUntil, until)
	sameTime(t, "b1 lease", e.get("b1").LeaseUntil, first)
	if got := e.get("a3"); got.Owner != "" || !got.LeaseUntil.IsZero() {
		t.Errorf("released job renewed: owner %q lease %v", got.Owner, got.LeaseUntil)
	}
	if got := e.get("free"); got.Owner != "" || !got.LeaseUntil.IsZero() {
		t.Errorf("free job renewed: owner %q lease %v", got.Owner, got.LeaseUntil)
	}
}

func testSetState(t *testing.T, e *env) {
	now := time.Now()
	e.add("s")
	if _, err := e.st.Request(e.ctx, "s", job.ActionSuspend, "r", now, held); err != nil {
		t.Fatal(err)
	}
	j, err := e.st.SetState(e.ctx, "s", []job.State{job.Suspended, job.Failed}, job.Queued, now)
	if err != nil {
		t.Fatalf("resume suspended: %v", err)
	}
	if j.State != job.Queued || e.get("s").State != job.Queued {
		t.Errorf("resumed: %s", j.State)
	}
	_, err = e.st.SetState(e.ctx, "s", []job.State{job.Suspended}, job.Queued, now)
	wantErr(t, "SetState from a state it is not in", err, job.ErrWrongState, "queued")

	e.add("f")
	e.finish("f", job.Failed)
	if e.get("f").Ended.IsZero() {
		t.Fatalf("failed job has no Ended")
	}
	j, err = e.st.SetState(e.ctx, "f", []job.State{job.Failed}, job.Queued, now)
	if err != nil {
		t.Fatalf("resume failed: %v", err)
	}
	if got := e.get("f"); got.State != job.Queued || !got.Ended.IsZero() {
		t.Errorf("resumed failed job: state %s ended %v", got.State, got.Ended)
	}
	if _, err := e.st.SetState(e.ctx, "f", []job.State{job.Queued}, job.Stopped, now); err != nil {
		t.Fatalf("stop queued: %v", err)
	}
	if got := e.get("f"); got.State != job.Stopped || got.Ended.IsZero() {
		t.Errorf("stopped job: state %s ended %v", got.State, got.Ended)
	}

	e.add("h")
	e.claim("h", "A", live())
	_, err = e.st.SetState(e.ctx, "h", []job.State{job.Running, job.Interrupted}, job.Queued, now)
	wantErr(t, "SetState of a held job", err, job.ErrHeld)
	if got := e.get("h"); got.State != job.Running || got.Owner != "A" {
		t.Errorf("held job changed: %s %q", got.State, got.Owner)
	}

	e.add("i")
	e.claim("i", "A", expired())
	_, err = e.st.SetState(e.ctx, "i", []job.State{job.Running}, job.Queued, time.Now())
	wantErr(t, "SetState interrupted job from running", err, job.ErrWrongState, "interrupted")
	j, err = e.st.SetState(e.ctx, "i", []job.State{job.Interrupted}, job.Queued, time.Now())
	if err != nil {
		t.Fatalf("resume interrupted: %v", err)
	}
	if got := e.get("i"); got.State != job.Queued || got.Owner != "" || !got.LeaseUntil.IsZero() || j.Owner != "" {
		t.Errorf("resumed interrupted: state %s owner %q lease %v", got.State, got.Owner, got.LeaseUntil)
	}
	err = e.st.Apply(e.ctx, &job.Update{JobID: "i", Owner: "A", State: ptr(job.Completed)})
	wantErr(t, "Apply by the owner after SetState", err, job.ErrLeaseLost)

	_, err = e.st.SetState(e.ctx, "nope", []job.State{job.Queued}, job.Stopped, now)
	wantErr(t, "SetState unknown", err, job.ErrNotFound)
}

func testDue(t *testing.T, e *env) {
	if wake, err := e.st.NextWake(e.ctx); err != nil || !wake.IsZero() {
		t.Errorf("NextWake of an empty store = %v, %v", wake, err)
	}
	now := time.Now()
	past := now.Add(-time.Minute).Truncate(time.Millisecond)
	soon := now.Add(time.Hour).Truncate(time.Millisecond)
	later := now.Add(2 * time.Hour).Truncate(time.Millisecond)

	e.add("1-queued")
	e.add("2-waiting-due")
	e.claim("2-waiting-due", "A", live())
	e.park("2-waiting-due", "A", past, "x")
	e.add("3-waiting-later")
	e.claim("3-waiting-later", "A", live())
	e.park("3-waiting-later", "A", later, "x")
	e.add("4-waiting-signal")
	e.claim("4-waiting-signal", "A", live())
	e.park("4-waiting-signal", "A", time.Time{}, "x")
	e.add("5-queued-held")
	e.claim("5-queued-held", "A", live())
	e.apply(&job.Update{JobID: "5-queued-held", Owner: "A", State: ptr(job.Queued)})
	e.add("6-queued-expired")
	e.claim("6-queued-expired", "A", expired())
	e.apply(&job.Update{JobID: "6-queued-expired", Owner: "A", State: ptr(job.Queued)})
	e.add("7-suspended")
	if _, err := e.st.Request(e.ctx, "7-suspended", job.ActionSuspend, "", now, held); err != nil {
		t.Fatal(err)
	}
	e.add("8-running")
	e.claim("8-running", "A", live())
	e.add("9-interrupted")
	e.claim("9-interrupted", "A", expired())
	e.add("10-waiting-soon")
	e.claim("10-waiting-soon", "A", live())
	e.park("10-waiting-soon", "A", soon, "x")
	e.add("11-queued")

	due, err := e.st.Due(e.ctx, time.Now(), 0)
	if err != nil {
		t.Fatalf("Due: %v", err)
	}
	want := []string{"1-queued", "2-waiting-due", "6-queued-expired", "11-queued"}
	if !slices.Equal(due, want) {
		t.Errorf("Due = %q, want %q", due, want)
	}
	due, _ = e.st.Due(e.ctx, time.Now(), 2)
	if !slices.Equal(due, want[:2]) {
		t.Errorf("Due limit 2 = %q, want %q", due, want[:2])
	}
	due, _ = e.st.Due(e.ctx, soon, 0)
	want = []string{"1-queued", "2-waiting-due", "6-queued-expired", "10-waiting-soon", "11-queued"}
	if !slices.Equal(due, want) {
		t.Errorf("Due at the next wake = %q, want %q", due, want)
	}
	wake, err := e.st.NextWake(e.ctx)
	if err != nil {
		t.Fatalf("NextWake: %v", err)
	}
	sameTime(t, "NextWake", wake, past)
}

func testJobs(t *testing.T, e *env) {
	e.add("a-queued")
	e.add("b-running")
	e.claim("b-running", "A", live())
	e.add("c-interrupted")
	e.claim("c-interrupted", "A", expired())
	e.add("d-completed")
	e.finish("d-completed", job.Completed)
	p := e.newJob("e-parent")
	c1 := e.newJob("f-child1")
	c1.ParentID = "e-parent"
	c2 := e.newJob("g-child2")
	c2.ParentID = "e-parent"
	g := e.newJob("h-grandchild")
	g.ParentID = "f-child1"
	e.create(p, c1, c2, g)
	now := time.Now()

	all, err := e.st.Jobs(e.ctx, job.Filter{}, now)
	if err != nil {
		t.Fatalf("Jobs: %v", err)
	}
	wantAll := []string{"a-queued", "b-running", "c-interrupted", "d-completed", "e-parent", "f-child1", "g-child2", "h-grandchild"}
	if !slices.Equal(ids(all), wantAll) {
		t.Errorf("Jobs = %q, want %q", ids(all), wantAll)
	}
	for _, tc := range []struct {
		f    job.Filter
		want []string
	}{
		{job.Filter{States: []job.State{job.Interrupted}}, []string{"c-interrupted"}},
		{job.Filter{States: []job.State{job.Running}}, []string{"b-running"}},
		{job.Filter{States: []job.State{job.Running, job.Interrupted}}, []string{"b-running", "c-interrupted"}},
		{job.Filter{States: []job.State{job.Completed, job.Interrupted}}, []string{"c-interrupted", "d-completed"}},
		{job.Filter{States: []job.State{job.Suspended}}, nil},
		{job.Filter{TopLevel: true}, []string{"a-queued", "b-running", "c-interrupted", "d-completed", "e-parent"}},
		{job.Filter{ParentID: "e-parent"}, []string{"f-child1", "g-child2"}},
		{job.Filter{ParentID: "f-child1"}, []string{"h-grandchild"}},
		{job.Filter{TopLevel: true, States: []job.State{job.Queued}}, []string{"a-queued", "e-parent"}},
		{job.Filter{Limit: 3}, []string{"a-queued", "b-running", "c-interrupted"}},
		{job.Filter{AfterID: "d-completed", Limit: 2}, []string{"e-parent", "f-child1"}},
		{job.Filter{AfterID: "e-parent", ParentID: "e-parent"}, []string{"f-child1", "g-child2"}},
		{job.Filter{AfterID: "h-grandchild"}, nil},
	} {
		got, err := e.st.Jobs(e.ctx, tc.f, now)
		if err != nil {
			t.Errorf("Jobs(%+v): %v", tc.f, err)
			continue
		}
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("Jobs(%+v) = %q, want %q", tc.f, ids(got), tc.want)
		}
	}
	// Interrupted is computed against the given now.
	got, _ := e.st.Jobs(e.ctx, job.Filter{States: []job.State{job.Interrupted}}, now.Add(2*time.Hour))
	if !slices.Equal(ids(got), []string{"b-running", "c-interrupted"}) {
		t.Errorf("interrupted two hours later = %q", ids(got))
	}
}

func testJobsPaging(t *testing.T, e *env) {
	// Jobs created in the same instant sort by id.
	var want []string
	var jobs []*job.Job
	for i := range 23 {
		j := e.newJob(fmt.Sprintf("job-%02d", i))
		if i%3 == 1 {
			j.Created = jobs[i-1].Created
		}
		jobs = append(jobs, j)
		want = append(want, j.ID)
	}
	// Create them out of order: the listing sorts.
	for i := len(jobs) - 1; i >= 0; i-- {
		e.create(jobs[i])
	}
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatalf("paging does not end: %q", got)
		}
		page, err := e.st.Jobs(e.ctx, job.Filter{AfterID: after, Limit: 5}, time.Now())
		if err != nil {
			t.Fatalf("Jobs after %q: %v", after, err)
		}
		if len(page) > 5 {
			t.Fatalf("page of %d jobs, limit 5", len(page))
		}
		if len(page) == 0 {
			break
		}
		got = append(got, ids(page)...)
		after = page[len(page)-1].ID
	}
	if !slices.Equal(got, want) {
		t.Errorf("pages = %q, want %q", got, want)
	}
}

// testJobsCreatedBy stores who submitted a job and through which endpoint,
// and lists one user's jobs.
func testJobsCreatedBy(t *testing.T, e *env) {
	a := e.newJob("a")
	a.CreatedBy, a.Endpoint = "alice", "patching"
	b := e.newJob("b")
	b.CreatedBy = "bob"
	c := e.newJob("c")
	c.CreatedBy, c.ParentID = "alice", "a"
	e.create(a, b, c, e.newJob("d"))
	if got := e.get("a"); got.CreatedBy != "alice" || got.Endpoint != "patching" {
		t.Errorf("CreatedBy, Endpoint = %q, %q, want alice, patching", got.CreatedBy, got.Endpoint)
	}
	if got := e.get("d"); got.CreatedBy != "" || got.Endpoint != "" {
		t.Errorf("job without a user: CreatedBy, Endpoint = %q, %q", got.CreatedBy, got.Endpoint)
	}
	for _, tc := range []struct {
		f    job.Filter
		want []string
	}{
		{job.Filter{CreatedBy: "alice"}, []string{"a", "c"}},
		{job.Filter{CreatedBy: "alice", TopLevel: true}, []string{"a"}},
		{job.Filter{CreatedBy: "bob", States: []job.State{job.Queued}}, []string{"b"}},
		{job.Filter{CreatedBy: "carol"}, nil},
		{job.Filter{CreatedBy: "alice", AfterID: "a"}, []string{"c"}},
	} {
		got, err := e.st.Jobs(e.ctx, tc.f, time.Now())
		if err != nil || !slices.Equal(ids(got), tc.want) {
			t.Errorf("Jobs(%+v) = %q, %v; want %q", tc.f, ids(got), err, tc.want)
		}
	}
}

func testCountChildren(t *testing.T, e *env) {
	p := e.newJob("p")
	var kids []*job.Job
	for i := range 6 {
		c := e.newJob(fmt.Sprintf("p.%d", i))
		c.ParentID = "p"
		kids = append(kids, c)
	}
	other := e.newJob("q.0")
	e.create(append([]*job.Job{p, e.newJob("q"), other}, kids...)...)
	e.claim("p.1", "A", live())
	e.claim("p.2", "A", expired())
	e.claim("p.3", "A", expired())
	e.finish("p.4", job.Completed)
	counts, err := e.st.CountChildren(e.ctx, "p", time.Now())
	if err != nil {
		t.Fatalf("CountChildren: %v", err)
	}
	want := map[job.State]int{job.Queued: 2, job.Running: 1, job.Interrupted: 2, job.Completed: 1}
	if len(counts) != len(want) {
		t.Errorf("CountChildren = %v, want %v", counts, want)
	}
	for st, n := range want {
		if counts[st] != n {
			t.Errorf("CountChildren[%s] = %d, want %d (all: %v)", st, counts[st], n, counts)
		}
	}
	if counts, err := e.st.CountChildren(e.ctx, "q.0", time.Now()); err != nil || len(counts) != 0 {
		t.Errorf("CountChildren of a childless job = %v, %v", counts, err)
	}
}

func testDeleteJob(t *testing.T, e *env) {
	p := e.newJob("p")
	c1 := e.newJob("p.1")
	c1.ParentID = "p"
	c2 := e.newJob("p.2")
	c2.ParentID = "p"
	g := e.newJob("p.1.1")
	g.ParentID = "p.1"
	keep := e.newJob("keep")
	e.create(p, c1, c2, g, keep)
	all := []string{"p", "p.1", "p.2", "p.1.1", "keep"}
	for _, id := range all {
		e.claim(id, "A", live())
		e.apply(&job.Update{JobID: id, Owner: "A",
			Steps:   []job.Step{{Key: "1", Activity: "sh", Status: job.StepDone, Started: e.base}},
			Records: []job.Record{{Stream: job.Log, Key: "1/print/0", Text: id}}})
		e.park(id, "A", time.Time{}, "go")
		if _, err := e.st.Signal(e.ctx, &job.Signal{JobID: id, Name: "go"}); err != nil {
			t.Fatalf("Signal %s: %v", id, err)
		}
	}
	if err := e.st.DeleteJob(e.ctx, "p"); err != nil {
		t.Fatalf("DeleteJob: %v", err)
	}
	for _, id := range all[:4] {
		if _, err := e.st.Job(e.ctx, id); !errors.Is(err, job.ErrNotFound) {
			t.Errorf("Job(%s) after deleting p: %v, want ErrNotFound", id, err)
		}
		if steps, err := e.st.Journal(e.ctx, id); len(steps) != 0 || (err != nil && !errors.Is(err, job.ErrNotFound)) {
			t.Errorf("Journal(%s) after delete = %v, %v", id, steps, err)
		}
		if recs, err := e.st.Records(e.ctx, id, job.Log, 0, 0); len(recs) != 0 || (err != nil && !errors.Is(err, job.ErrNotFound)) {
			t.Errorf("Records(%s) after delete = %v, %v", id, recs, err)
		}
		if sigs, err := e.st.Signals(e.ctx, id); len(sigs) != 0 || (err != nil && !errors.Is(err, job.ErrNotFound)) {
			t.Errorf("Signals(%s) after delete = %v, %v", id, sigs, err)
		}
	}
	if got := e.get("keep"); got.Steps != 1 {
		t.Errorf("kept job lost its steps: %d", got.Steps)
	}
	if recs, _ := e.st.Records(e.ctx, "keep", job.Log, 0, 0); len(recs) != 1 {
		t.Errorf("kept job has %d records, want 1", len(recs))
	}
	if sigs, _ := e.st.Signals(e.ctx, "keep"); len(sigs) != 1 {
		t.Errorf("kept job has %d signals, want 1", len(sigs))
	}
	if _, err := e.st.Source(e.ctx, e.source().Digest); err != nil {
		t.Errorf("source of the kept job: %v", err)
	}
	wantErr(t, "DeleteJob again", e.st.DeleteJob(e.ctx, "p"), job.ErrNotFound)

	// Deleting a child leaves its parent.
	q := e.newJob("q")
	qc := e.newJob("q.1")
	qc.ParentID = "q"
	e.create(q, qc)
	if err := e.st.DeleteJob(e.ctx, "q.1"); err != nil {
		t.Fatalf("DeleteJob child: %v", err)
	}
	e.get("q")
	if kids, _ := e.st.Jobs(e.ctx, job.Filter{ParentID: "q"}, time.Now()); len(kids) != 0 {
		t.Errorf("children after delete: %q", ids(kids))
	}
}

func testWorkflows(t *testing.T, e *env) {
	_, err := e.st.Workflow(e.ctx, "patch")
	wantErr(t, "Workflow unknown", err, job.ErrNotFound)
	if ws, err := e.st.Workflows(e.ctx); err != nil || len(ws) != 0 {
		t.Errorf("Workflows of an empty store = %v, %v", ws, err)
	}
	v1 := source("v1")
	t1 := e.base.Add(time.Minute)
	w, err := e.st.PutWorkflow(e.ctx, "patch", v1, t1)
	if err != nil {
		t.Fatalf("PutWorkflow: %v", err)
	}
	if w.Name != "patch" || w.Version != 1 || w.Digest != v1.Digest || w.Entry != v1.Entry {
		t.Errorf("first version = %+v", w)
	}
	sameTime(t, "Created", w.Created, t1)
	sameTime(t, "Updated", w.Updated, t1)
	if s, err := e.st.Source(e.ctx, v1.Digest); err != nil || s.Files["main.star"] != v1.Files["main.star"] {
		t.Errorf("source of the workflow: %+v, %v", s, err)
	}

	t2 := t1.Add(time.Minute)
	w, err = e.st.PutWorkflow(e.ctx, "patch", v1, t2)
	if err != nil || w.Version != 1 {
		t.Errorf("same source again = %+v, %v; want version 1", w, err)
	}
	v2 := source("v2")
	v2.Entry = "flow.star"
	v2.Files["flow.star"] = v2.Files["main.star"]
	v2.Seal()
	t3 := t2.Add(time.Minute)
	w, err = e.st.PutWorkflow(e.ctx, "patch", v2, t3)
	if err != nil {
		t.Fatalf("PutWorkflow v2: %v", err)
	}
	if w.Version != 2 || w.Digest != v2.Digest || w.Entry != "flow.star" {
		t.Errorf("second version = %+v", w)
	}
	sameTime(t, "Created kept", w.Created, t1)
	sameTime(t, "Updated", w.Updated, t3)
	got, err := e.st.Workflow(e.ctx, "patch")
	if err != nil || got.Version != 2 || got.Digest != v2.Digest || got.Entry != "flow.star" {
		t.Errorf("Workflow = %+v, %v", got, err)
	}
	if _, err := e.st.PutWorkflow(e.ctx, "backup", v1, t3); err != nil {
		t.Fatalf("PutWorkflow backup: %v", err)
	}
	ws, err := e.st.Workflows(e.ctx)
	if err != nil || len(ws) != 2 || ws[0].Name != "backup" || ws[1].Name != "patch" || ws[1].Version != 2 {
		t.Errorf("Workflows = %+v, %v", ws, err)
	}
	if err := e.st.DeleteWorkflow(e.ctx, "patch"); err != nil {
		t.Fatalf("DeleteWorkflow: %v", err)
	}
	_, err = e.st.Workflow(e.ctx, "patch")
	wantErr(t, "Workflow after delete", err, job.ErrNotFound)
	wantErr(t, "DeleteWorkflow again", e.st.DeleteWorkflow(e.ctx, "patch"), job.ErrNotFound)
	if _, err := e.st.Source(e.ctx, v1.Digest); err != nil {
		t.Errorf("a deleted workflow's source must stay for its jobs: %v", err)
	}
	if ws, _ := e.st.Workflows(e.ctx); len(ws) != 1 {
		t.Errorf("Workflows after delete = %+v", ws)
	}
}

// testConcurrentJobs runs many one-step jobs at once, the way the engine
// does, and checks that every write is there.
func testConcurrentJobs(t *testing.T, e *env) {
	const workers, perWorker = 16, 12
	src := e.source()
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for w := range workers {
		wg.Go(func() {
			owner := fmt.Sprintf("engine-%d", w)
			for i := range perWorker {
				id := fmt.Sprintf("c-%02d-%02d", w, i)
				j := &job.Job{ID: id, Digest: src.Digest, Input: json.RawMessage(`{}`), Persist: job.PersistCheckpoints,
					OnError: job.OnErrorFail, Owner: owner, LeaseUntil: live(), Created: time.Now()}
				if err := e.st.CreateJobs(e.ctx, src, j); err != nil {
					errs <- fmt.Errorf("create %s: %w", id, err)
					continue
				}
				now := time.Now()
				err := e.st.Apply(e.ctx, &job.Update{JobID: id, Owner: owner,
					Steps:   []job.Step{{Key: "1", Activity: "sh", Status: job.StepDone, Result: json.RawMessage(`{"code":0}`), Started: now, Ended: now}},
					Records: []job.Record{{Stream: job.Output, Key: "1/emit/0", Value: json.RawMessage(`"` + id + `"`)}},
					State:   ptr(job.Completed), Ended: &now, Result: json.RawMessage(`"ok"`), Release: true})
				if err != nil {
					errs <- fmt.Errorf("apply %s: %w", id, err)
					continue
				}
				if _, err := e.st.Job(e.ctx, id); err != nil {
					errs <- fmt.Errorf("read %s: %w", id, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	all, err := e.st.Jobs(e.ctx, job.Filter{}, time.Now())
	if err != nil {
		t.Fatalf("Jobs: %v", err)
	}
	if len(all) != workers*perWorker {
		t.Fatalf("%d jobs stored, want %d", len(all), workers*perWorker)
	}
	for _, j := range all {
		if j.State != job.Completed || j.Steps != 1 || j.Owner != "" || string(j.Result) != `"ok"` {
			t.Errorf("job %s: state %s steps %d owner %q result %s", j.ID, j.State, j.Steps, j.Owner, j.Result)
		}
		recs, err := e.st.Records(e.ctx, j.ID, job.Output, 0, 0)
		if err != nil || len(recs) != 1 || string(recs[0].Value) != `"`+j.ID+`"` {
			t.Errorf("job %s output = %+v, %v", j.ID, recs, err)
		}
	}
}

// testConcurrentSteps has many branches of one job journal at once: no
// step and no count may be lost.
func testConcurrentSteps(t *testing.T, e *env) {
	e.add("j")
	e.claim("j", "A", live())
	const branches, steps = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, branches*steps)
	for b := range branches {
		wg.Go(func() {
			for s := range steps {
				key := fmt.Sprintf("1/b%d/%d", b, s)
				err := e.st.Apply(e.ctx, &job.Update{JobID: "j", Owner: "A",
					Steps:    []job.Step{{Key: key, Activity: "sh", Status: job.StepDone, Started: time.Now()}},
					Records:  []job.Record{{Stream: job.Log, Key: key + "/print/0", Text: key}},
					Progress: &job.Progress{Done: float64(s)}})
				if err != nil {
					errs <- fmt.Errorf("apply %s: %w", key, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := e.get("j").Steps; got != branches*steps {
		t.Errorf("Steps = %d, want %d", got, branches*steps)
	}
	journal, err := e.st.Journal(e.ctx, "j")
	if err != nil || len(journal) != branches*steps {
		t.Errorf("journal has %d steps (%v), want %d", len(journal), err, branches*steps)
	}
	recs, err := e.st.Records(e.ctx, "j", job.Log, 0, 0)
	if err != nil || len(recs) != branches*steps {
		t.Errorf("log has %d records (%v), want %d", len(recs), err, branches*steps)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Seq <= recs[i-1].Seq {
			t.Errorf("seq %d after %d", recs[i].Seq, recs[i-1].Seq)
		}
	}
}

// testConcurrentFenced mixes updates that hold their job with updates
// that do not, at the same time: the fenced-out ones fail alone and leave
// nothing behind.
func testConcurrentFenced(t *testing.T, e *env) {
	const n = 32
	for i := range n {
		id := fmt.Sprintf("f-%02d", i)
		e.add(id)
		e.claim(id, "A", live())
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			owner := "A"
			if i%2 == 1 {
				owner = "B"
			}
			id := fmt.Sprintf("f-%02d", i)
			errs[i] = e.st.Apply(e.ctx, &job.Update{JobID: id, Owner: owner,
				Steps:   []job.Step{{Key: "1", Activity: "sh", Status: job.StepDone, Started: time.Now()}},
				Records: []job.Record{{Stream: job.Output, Key: "1/emit/0", Value: json.RawMessage(`1`)}},
				State:   ptr(job.Completed), Release: true})
		})
	}
	wg.Wait()
	for i := range n {
		id := fmt.Sprintf("f-%02d", i)
		j := e.get(id)
		recs, _ := e.st.Records(e.ctx, id, job.Output, 0, 0)
		if i%2 == 0 {
			if errs[i] != nil || j.State != job.Completed || j.Steps != 1 || len(recs) != 1 {
				t.Errorf("%s by its owner: err %v state %s steps %d records %d", id, errs[i], j.State, j.Steps, len(recs))
			}
		} else {
			if !errors.Is(errs[i], job.ErrLeaseLost) || j.State != job.Running || j.Steps != 0 || len(recs) != 0 {
				t.Errorf("%s by a stranger: err %v state %s steps %d records %d", id, errs[i], j.State, j.Steps, len(recs))
			}
		}
	}
}

func testConcurrentRecords(t *testing.T, e *env) {
	e.add("j")
	const writers, keys = 8, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for k := range keys {
				rec := job.Record{JobID: "j", Stream: job.Output, Key: fmt.Sprintf("k%02d", k), Value: json.RawMessage(fmt.Sprint(w))}
				if err := e.st.AppendRecords(e.ctx, []job.Record{rec}); err != nil {
					t.Errorf("AppendRecords: %v", err)
				}
			}
		})
	}
	wg.Wait()
	recs, err := e.st.Records(e.ctx, "j", job.Output, 0, 0)
	if err != nil || len(recs) != keys {
		t.Fatalf("%d records (%v), want %d: one per key", len(recs), err, keys)
	}
}

// testConcurrentAtomic runs failing multi-row writes among good ones at
// the same time: a failing write leaves none of its rows, whatever else
// commits beside it.
func testConcurrentAtomic(t *testing.T, e *env) {
	e.add("dup")
	e.add("held")
	e.claim("held", "A", live())
	const n = 24
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		fresh := e.newJob(fmt.Sprintf("fresh-%02d", i))
		dup := e.newJob("dup")
		wg.Go(func() {
			switch i % 3 {
			case 0: // one new job, then one that exists
				errs[i] = e.st.CreateJobs(e.ctx, e.source(), fresh, dup)
			case 1: // a good write
				errs[i] = e.st.CreateJobs(e.ctx, e.source(), fresh)
			case 2: // records, then a step for another job's key: all fenced
				errs[i] = e.st.Apply(e.ctx, &job.Update{JobID: "held", Owner: "B",
					Steps: []job.Step{{Key: fmt.Sprint(i), Activity: "sh", Status: job.StepDone, Started: e.base}}})
			}
		})
	}
	wg.Wait()
	for i := range n {
		id := fmt.Sprintf("fresh-%02d", i)
		_, err := e.st.Job(e.ctx, id)
		switch i % 3 {
		case 0:
			if errs[i] == nil {
				t.Errorf("CreateJobs with an existing id succeeded (%d)", i)
			}
			if !errors.Is(err, job.ErrNotFound) {
				t.Errorf("%s of a failed CreateJobs was stored: %v", id, err)
			}
		case 1:
			if errs[i] != nil || err != nil {
				t.Errorf("good CreateJobs of %s: %v; Job: %v", id, errs[i], err)
			}
		case 2:
			if !errors.Is(errs[i], job.ErrLeaseLost) {
				t.Errorf("Apply by a stranger: %v, want ErrLeaseLost", errs[i])
			}
		}
	}
	if steps, _ := e.st.Journal(e.ctx, "held"); len(steps) != 0 {
		t.Errorf("fenced-out updates wrote %d steps", len(steps))
	}
}

func testCanceledContext(t *testing.T, e *env) {
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	if err := e.st.CreateJobs(ctx, e.source(), e.newJob("never")); err == nil {
		t.Errorf("CreateJobs with a canceled context succeeded")
	}
	if _, err := e.st.Job(e.ctx, "never"); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("job created despite a canceled context: %v", err)
	}
	// The store still works.
	e.add("after")
}
