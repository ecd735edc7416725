package crashtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/store/sqlite"
)

// resumeAll runs drover resume --all to its end and checks that every job
// completed.
func (e *env) resumeAll(timeout time.Duration) *snapshot {
	e.t.Helper()
	e.mustDrover(0, timeout, "resume", "--all")
	s := e.snapshot()
	for id, j := range s.jobs {
		if j.State != job.Completed {
			e.t.Errorf("after resume --all job %s is %s (error %q, reason %q)", id, j.State, j.Error, j.Reason)
		}
	}
	return s
}

// A long sh under --persist always: the steps before it are committed and
// never run again; the step in flight runs again.
func TestKillDuringLongSh(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wf := e.workflow("long.star", `
def main():
    step("s1")
    step("s2")
    step("s3")
    step("s4", "touch @DIR@/s4.started; [ -e @DIR@/resumed ] || sleep 30;")
    step("s5")
`)
	p := e.start("run", "--persist", "always", wf)
	e.eventually(10*time.Second, "s4 to start", func() bool { return e.exists("s4.started") })
	if !p.Kill() {
		t.Fatalf("drover ended before the kill: %s", p)
	}
	orphans := e.killOrphans()
	if orphans > 0 {
		t.Logf("kill -9 of drover left %d local step process(es) running (killed by the test)", orphans)
	}
	before := e.snapshot()
	j := before.onlyJob(t)
	if got := before.doneKeys(j.ID); strings.Join(got, ",") != "1,2,3" {
		t.Errorf("journal at the kill holds %v, want steps 1,2,3 (persist always)", got)
	}
	states := e.jobsJSON()
	if len(states) != 1 || states[0]["state"] != "interrupted" {
		t.Errorf("drover jobs shows %v, want the killed job interrupted", states)
	}

	e.touch("resumed")
	e.resumeAll(30 * time.Second)
	e.checkOnce(before.committed(t))
	counts := e.ran()
	if counts["s4"] != 2 {
		t.Errorf("the step in flight at the kill ran %d times, want 2 (it runs again on resume)", counts["s4"])
	}
	if counts["s5"] != 1 {
		t.Errorf("s5 ran %d times", counts["s5"])
	}
}

// --persist checkpoints: what ran after the last checkpoint() runs again;
// what ran before it never does.
func TestKillAfterCheckpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wf := e.workflow("cp.star", `
def main():
    step("s1")
    step("s2")
    step("s3")
    checkpoint()
    step("s4")
    step("s5")
    step("s6", "touch @DIR@/s6.started; [ -e @DIR@/resumed ] || sleep 30;")
    step("s7")
`)
	p := e.start("run", wf) // checkpoints is the default
	e.eventually(10*time.Second, "s6 to start", func() bool { return e.exists("s6.started") })
	p.Kill()
	e.killOrphans()
	before := e.snapshot()
	j := before.onlyJob(t)
	if j.Persist != job.PersistCheckpoints {
		t.Errorf("job persist = %s", j.Persist)
	}
	if got := before.doneKeys(j.ID); strings.Join(got, ",") != "1,2,3" {
		t.Errorf("journal at the kill holds %v, want exactly the steps before checkpoint(): 1,2,3", got)
	}
	e.touch("resumed")
	e.resumeAll(30 * time.Second)
	e.checkOnce(before.committed(t))
	counts := e.ran()
	for _, l := range []string{"s4", "s5", "s6"} {
		if counts[l] != 2 {
			t.Errorf("%s, run after the checkpoint, ran %d times, want 2", l, counts[l])
		}
	}
	if counts["s7"] != 1 {
		t.Errorf("s7 ran %d times", counts["s7"])
	}
}

// Kills at arbitrary moments between steps under --persist always, in the
// first run and in three resumes: no committed step runs twice, and each
// kill repeats at most the one step that was not committed yet.
func TestKillBetweenStepsRepeatedly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const n = 120
	wf := e.workflow("many.star", fmt.Sprintf(`
def main():
    for i in range(%d):
        step("s%%d" %% i)
        emit(i)
`, n))
	var frozen map[string]commit
	kills := 0
	p := e.start("run", "--persist", "always", wf)
	for round := 0; round < 4; round++ {
		target := len(e.ranLines()) + 20
		e.eventually(20*time.Second, fmt.Sprintf("%d lines in ran.txt", target), func() bool {
			return len(e.ranLines()) >= target || p.Exited()
		})
		if !p.Kill() {
			break // it finished first
		}
		kills++
		s := e.snapshot()
		frozen = e.freeze(s.committed(t), frozen)
		// Everything before the last committed step is committed too.
		j := s.onlyJob(t)
		if got := len(s.doneKeys(j.ID)); got != j.Steps {
			t.Errorf("job.Steps = %d but the journal holds %d done steps", j.Steps, got)
		}
		t.Logf("kill %d: %d lines, %d committed steps, job %s runs %d", kills, len(e.ranLines()), j.Steps, j.EffectiveState(time.Now()), j.Runs)
		e.checkNotAgain(frozen)
		p = e.start("resume", "--all")
	}
	if code := p.Wait(t, 60*time.Second); code != 0 {
		t.Fatalf("the last resume: %s", p)
	}
	s := e.snapshot()
	j := s.onlyJob(t)
	if j.State != job.Completed {
		t.Fatalf("job %s: %s %s", j.ID, j.State, j.Error)
	}
	e.checkNotAgain(frozen)
	e.checkAll(labels("s", 0, n-1))
	// The output holds every emit() once, in order, replays and reruns
	// notwithstanding.
	st, err := sqlite.Open(e.ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs, err := st.Records(e.ctx, j.ID, job.Output, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var vals []string
	for _, r := range recs {
		vals = append(vals, string(r.Value))
	}
	if want := strings.Join(labels("", 0, n-1), ","); strings.Join(vals, ",") != want {
		t.Errorf("output after %d kills:\n got  %s\n want %s", kills, strings.Join(vals, ","), want)
	}
	dups := 0
	for _, c := range e.ran() {
		if c > 1 {
			dups += c - 1
		}
	}
	if dups > kills {
		t.Errorf("%d step runs repeated after %d kills under --persist always; at most one per kill", dups, kills)
	}
	if kills < 2 {
		t.Logf("only %d kills landed before the job ended", kills)
	}
}

// Inside a foreach_parallel with a throttle: finished branches' steps are
// committed and never run again; those in flight run again.
func TestKillInsideForeachParallel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wf := e.workflow("fan.star", `
def main():
    def one(x):
        r = step("b%d" % x, "mkdir @DIR@/in.$$ 2>/dev/null; ls -d @DIR@/in.* | wc -l >> @DIR@/width.txt; sleep 0.2; rmdir @DIR@/in.$$;")
        return r.stdout.strip()
    got = foreach_parallel(range(1, 13), one, throttle=3)
    step("end")
    emit(got)
`)
	p := e.start("run", "--persist", "always", wf)
	e.eventually(20*time.Second, "five branches to run", func() bool { return len(e.ranLines()) >= 5 })
	p.Kill()
	e.killOrphans()
	before := e.snapshot()
	j := before.onlyJob(t)
	done := before.doneKeys(j.ID)
	if len(done) == 0 {
		t.Errorf("no branch step committed under --persist always after 5 ran")
	}
	for _, k := range done {
		if !strings.HasPrefix(k, "1/b") {
			t.Errorf("unexpected key %s: branch steps are keyed 1/bI/1", k)
		}
	}
	_ = removeGlob(e, "in.")
	e.resumeAll(30 * time.Second)
	e.checkOnce(before.committed(t))
	e.checkAll(append(labels("b", 1, 12), "end"))
	counts := e.ran()
	again := 0
	for _, l := range labels("b", 1, 12) {
		if counts[l] > 1 {
			again++
		}
	}
	if again > 3 {
		t.Errorf("%d branches ran twice; only those in flight (throttle 3) may", again)
	}
	st, err := sqlite.Open(e.ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs, err := st.Records(e.ctx, j.ID, job.Output, 0, 0)
	if err != nil || len(recs) != 1 {
		t.Fatalf("output records %v, %v", recs, err)
	}
	want := `["b1","b2","b3","b4","b5","b6","b7","b8","b9","b10","b11","b12"]`
	if string(recs[0].Value) != want {
		t.Errorf("output %s, want the results in item order %s", recs[0].Value, want)
	}
	for _, w := range readLines(e, "width.txt") {
		if w != "1" && w != "2" && w != "3" {
			t.Errorf("%s branches ran at once under throttle=3", w)
		}
	}
}

// A durable sleep wakes at its original time after a crash: resume does
// not restart the timer, neither after the first kill nor after a kill of
// the resume itself.
func TestKillDuringDurableSleep(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wf := e.workflow("sleep.star", `
def main():
    step("s1")
    sleep("7s")
    step("s2", "date +%s%N > @DIR@/woke.txt;")
`)
	p := e.start("run", wf)
	var wake time.Time
	e.eventually(10*time.Second, "the job to unload for its sleep", func() bool {
		e.peek(func(st *sqlite.Store) {
			js, err := st.Jobs(e.ctx, job.Filter{}, time.Now())
			if err == nil && len(js) == 1 && js[0].State == job.Waiting && !js[0].WakeAt.IsZero() {
				wake = js[0].WakeAt
			}
		})
		return !wake.IsZero()
	})
	if !p.Kill() {
		t.Fatalf("drover run ended during the sleep: %s", p)
	}
	before := e.snapshot()
	j := before.onlyJob(t)
	if j.State != job.Waiting || len(j.WaitFor) != 0 {
		t.Errorf("a sleeping job reads %s waiting for %v", j.State, j.WaitFor)
	}
	var pending *job.Step
	for i, st := range before.journal[j.ID] {
		if st.Activity == "sleep" {
			pending = &before.journal[j.ID][i]
		}
	}
	if pending == nil || pending.Status != job.StepPending {
		t.Fatalf("journal has no pending sleep step: %+v", before.journal[j.ID])
	}

	// Resume, and kill the resume itself while it sleeps.
	time.Sleep(500 * time.Millisecond)
	r := e.start("resume", "--all")
	time.Sleep(time.Second)
	if !r.Kill() {
		t.Fatalf("resume ended before the wake time: %s", r)
	}
	if e.exists("woke.txt") {
		t.Fatalf("the step after sleep ran before its wake time %v", wake)
	}
	e.resumeAll(30 * time.Second)
	e.checkOnce(before.committed(t))
	woke := readLines(e, "woke.txt")
	if len(woke) != 1 {
		t.Fatalf("woke.txt = %v", woke)
	}
	var ns int64
	if err := json.Unmarshal([]byte(woke[0]), &ns); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(0, ns)
	if at.Before(wake) {
		t.Errorf("woke at %v, before the wake time %v", at.Format(time.StampMilli), wake.Format(time.StampMilli))
	}
	if late := at.Sub(wake); late > 2*time.Second {
		t.Errorf("woke %s after the original wake time %v: the timer was restarted", late, wake.Format(time.StampMilli))
	}
	if e.ran()["s2"] != 1 {
		t.Errorf("s2 ran %d times", e.ran()["s2"])
	}
}

// A job waiting for a signal survives a kill; the signal is consumed once
// even when the resume that consumed it is killed too.
func TestKillWhileWaitingForSignal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wf := e.workflow("approve.star", `
def main():
    step("s1")
    a = wait("go-live")
    step("s2", "touch @DIR@/s2.started; [ -e @DIR@/resumed ] || sleep 30;")
    emit(a)
`)
	p := e.start("run", wf)
	var id string
	e.eventually(10*time.Second, "the job to wait", func() bool {
		e.peek(func(st *sqlite.Store) {
			js, err := st.Jobs(e.ctx, job.Filter{}, time.Now())
			if err == nil && len(js) == 1 && js[0].State == job.Waiting {
				id = js[0].ID
			}
		})
		return id != ""
	})
	if p.Kill() {
		t.Logf("killed drover run while the job waited")
	} else if p.Code != 3 {
		t.Errorf("drover run of a waiting job: want exit 3, got %s", p)
	}
	before := e.snapshot()
	j := before.onlyJob(t)
	if j.State != job.Waiting || strings.Join(j.WaitFor, ",") != "go-live" {
		t.Fatalf("job is %s waiting for %v", j.State, j.WaitFor)
	}

	// Nothing to do without the signal.
	r := e.mustDrover(3, 20*time.Second, "resume", "--all")
	if !strings.Contains(r.Stderr.String(), "drover signal "+id+" go-live") {
		t.Errorf("resume of a job waiting for a signal does not say how to send it:\n%s", r.Stderr.String())
	}
	e.mustDrover(0, 20*time.Second, "signal", id, "go-live", `{"approved": true}`)

	// The resume that takes the signal is killed in the next step.
	r2 := e.start("resume", "--all")
	e.eventually(10*time.Second, "s2 to start", func() bool { return e.exists("s2.started") })
	r2.Kill()
	e.killOrphans()
	frozen := e.freeze(e.snapshot().committed(t), nil)
	e.touch("resumed")
	e.resumeAll(30 * time.Second)
	e.checkOnce(before.committed(t))
	e.checkNotAgain(frozen)
	st, err := sqlite.Open(e.ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs, err := st.Records(e.ctx, id, job.Output, 0, 0)
	if err != nil || len(recs) != 1 {
		t.Fatalf("output %v %v", recs, err)
	}
	var a map[string]any
	_ = json.Unmarshal(recs[0].Value, &a)
	if a["approved"] != true || a["by"] == nil {
		t.Errorf("wait() returned %s, want the signal's payload with its sender", recs[0].Value)
	}
	if sigs, _ := st.Signals(e.ctx, id); len(sigs) != 0 {
		t.Errorf("the signal is still pending after the job completed: %v", sigs)
	}
}

// Fifty jobs run by fifty drover processes, all killed; then one resume
// of all of them, killed mid-way; then a resume to the end. Every job
// completes and no committed step runs twice.
func TestKillManyJobs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const jobs, steps = 50, 5
	// s1 holds every job until go1 exists, s3 until go2 does: the kills
	// land while every job is mid-way.
	wf := e.workflow("job.star", `
def main(id=0):
    step("j%d-s0" % id)
    step("j%d-s1" % id, "while [ ! -e @DIR@/go1 ]; do sleep 0.05; done;")
    step("j%d-s2" % id, "sleep 0.1;")
    step("j%d-s3" % id, "while [ ! -e @DIR@/go2 ]; do sleep 0.05; done;")
    step("j%d-s4" % id)
`)
	// The store exists before fifty processes race to open it (creating it
	// concurrently is TestFirstOpenWaitsForWriter's business).
	e.mustDrover(0, 20*time.Second, "jobs")
	var procs []*proc
	for i := 0; i < jobs; i++ {
		procs = append(procs, e.start("run", "--persist", "always", "-p", fmt.Sprintf("id=%d", i), wf))
	}
	reached := func(s int) int {
		c := e.ran()
		n := 0
		for i := 0; i < jobs; i++ {
			if c[fmt.Sprintf("j%d-s%d", i, s)] > 0 {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(40 * time.Second)
	for reached(1) < jobs {
		exited := 0
		for _, p := range procs {
			if p.Exited() {
				exited++
				if exited == 1 {
					t.Errorf("a drover run ended before its job reached s1: %s", p)
				}
			}
		}
		if exited > 0 {
			t.Fatalf("%d of %d drover runs ended early; %d jobs reached s1", exited, jobs, reached(1))
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 40s only %d of %d jobs reached s1", reached(1), jobs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range procs {
		if !p.Kill() {
			t.Errorf("drover run ended before the kill: %s", p)
		}
	}
	e.killOrphans()
	first := e.snapshot()
	if len(first.jobs) != jobs {
		t.Fatalf("the store holds %d jobs, want %d", len(first.jobs), jobs)
	}
	committed := first.committed(t)
	if len(committed) != jobs {
		t.Errorf("%d steps committed across %d jobs that each finished s0 under --persist always", len(committed), jobs)
	}
	e.checkOnce(committed)
	frozen := e.freeze(committed, nil)

	// One resume of all fifty, killed when half of them are at s3.
	e.touch("go1")
	r := e.start("resume", "--all")
	e.eventually(40*time.Second, "half the jobs to reach s3", func() bool { return reached(3) >= jobs/2 || r.Exited() })
	if !r.Kill() {
		t.Fatalf("resume --all ended before the kill: %s", r)
	}
	e.killOrphans()
	mid := e.snapshot()
	e.checkNotAgain(frozen)
	frozen = e.freeze(mid.committed(t), frozen)
	if len(frozen) < jobs*2 {
		t.Errorf("only %d steps committed after the resume ran s1 and s2 of at least half the jobs", len(frozen))
	}

	e.touch("go2")
	final := e.resumeAll(60 * time.Second)
	if len(final.jobs) != jobs {
		t.Errorf("%d jobs after resuming, want %d", len(final.jobs), jobs)
	}
	e.checkNotAgain(frozen)
	var all []string
	for i := 0; i < jobs; i++ {
		for s := 0; s < steps; s++ {
			all = append(all, fmt.Sprintf("j%d-s%d", i, s))
		}
	}
	e.checkAll(all)
	for id, j := range final.jobs {
		if j.Steps != steps {
			t.Errorf("job %s has %d steps, want %d", id, j.Steps, steps)
		}
	}
}

func readLines(e *env, name string) []string {
	data, err := readFile(e, name)
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// --persist never: nothing but the job itself is stored before the end,
// so after a kill every step runs again.
func TestKillUnderPersistNever(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wf := e.workflow("never.star", `
def main():
    step("s1")
    step("s2")
    checkpoint()
    step("s3", "touch @DIR@/s3.started; [ -e @DIR@/resumed ] || sleep 30;")
    step("s4")
`)
	p := e.start("run", "--persist", "never", wf)
	e.eventually(10*time.Second, "s3 to start", func() bool { return e.exists("s3.started") })
	p.Kill()
	e.killOrphans()
	before := e.snapshot()
	j := before.onlyJob(t)
	if j.Persist != job.PersistNever {
		t.Errorf("persist = %s", j.Persist)
	}
	if got := before.doneKeys(j.ID); len(got) != 0 {
		t.Errorf("--persist never: the journal holds %v before the end", got)
	}
	e.touch("resumed")
	e.resumeAll(30 * time.Second)
	c := e.ran()
	for l, want := range map[string]int{"s1": 2, "s2": 2, "s3": 2, "s4": 1} {
		if c[l] != want {
			t.Errorf("%s ran %d times, want %d", l, c[l], want)
		}
	}
}

// drover run killed at arbitrary moments of its start: every job that got
// created is resumable and completes; none is left running or lost.
func TestKillAtStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	wf := e.workflow("quick.star", `
def main(id=0):
    step("q%d-a" % id)
    step("q%d-b" % id)
`)
	// The store exists before the runs race to create it.
	e.mustDrover(0, 20*time.Second, "jobs")
	var procs []*proc
	for i := 0; i < 10; i++ {
		procs = append(procs, e.start("run", "--persist", "always", "-p", fmt.Sprintf("id=%d", i), wf))
	}
	for i, p := range procs {
		time.Sleep(time.Duration(i) * 4 * time.Millisecond) // the chosen moments
		p.Kill()
	}
	e.killOrphans()
	before := e.snapshot()
	frozen := e.freeze(before.committed(t), nil)
	final := e.snapshot()
	if len(final.jobs) > 0 {
		final = e.resumeAll(30 * time.Second)
	}
	e.checkNotAgain(frozen)
	for id, j := range final.jobs {
		var in struct{ ID int }
		_ = json.Unmarshal(j.Input, &in)
		for _, s := range []string{"a", "b"} {
			if e.ran()[fmt.Sprintf("q%d-%s", in.ID, s)] == 0 {
				t.Errorf("job %s (id=%d) completed without running step %s", id, in.ID, s)
			}
		}
	}
	t.Logf("%d of 10 runs had created their job when killed", len(final.jobs))
}

// An engine that freezes (SIGSTOP: a VM pause, a swap storm) loses its
// job when its lease expires; another resumes it. When the frozen engine
// comes back it must not commit anything nor run steps the other engine
// committed.
func TestFrozenEngineLosesLease(t *testing.T) {
	for _, persist := range []string{"always", "checkpoints"} {
		t.Run(persist, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			wf := e.workflow("frozen.star", `
def main():
    step("s1")
    checkpoint()
    step("s2", "touch @DIR@/s2.started; while [ ! -e @DIR@/thaw ]; do sleep 0.05; done;")
    step("s3")
    step("s4")
`)
			p := e.start("run", "--persist", persist, wf)
			e.eventually(10*time.Second, "s2 to start", func() bool { return e.exists("s2.started") })
			var id string
			e.peek(func(st *sqlite.Store) {
				js, _ := st.Jobs(e.ctx, job.Filter{}, time.Now())
				if len(js) == 1 {
					id = js[0].ID
				}
			})
			// While its engine is alive and renewing, the job is not taken.
			r := e.mustDrover(1, 20*time.Second, "resume", id)
			if !strings.Contains(r.Stderr.String(), "running in another drover process") {
				t.Errorf("resume of a job another process runs:\n%s", r.Stderr.String())
			}
			if err := p.Cmd.Process.Signal(syscallSIGSTOP); err != nil {
				t.Fatal(err)
			}
			defer p.Cmd.Process.Signal(syscallSIGCONT)
			// After the 2s lease the job reads interrupted and is resumed
			// by another process; its s2 runs again there.
			e.eventually(10*time.Second, "the lease to expire", func() bool {
				js := e.jobsJSON()
				return len(js) == 1 && js[0]["state"] == "interrupted"
			})
			e.touch("thaw")
			e.resumeAll(30 * time.Second)
			done := e.snapshot()
			frozen := e.freeze(done.committed(t), nil)
			// Thaw the old engine: its s2 ends; it must stop there.
			if err := p.Cmd.Process.Signal(syscallSIGCONT); err != nil {
				t.Fatal(err)
			}
			code := p.Wait(t, 20*time.Second)
			e.checkNotAgain(frozen)
			after := e.snapshot()
			j := after.onlyJob(t)
			if j.State != job.Completed || j.Owner != "" {
				t.Errorf("after the old engine came back the job is %s owned by %q", j.State, j.Owner)
			}
			t.Logf("the thawed drover run exited %d\n%s", code, p.Stderr.String())
		})
	}
}
