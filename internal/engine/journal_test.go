package engine_test

import (
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// A second Execute of a job replays its committed steps from the journal:
// their side effects do not happen again, and now()/uuid() return what
// they returned the first time.
func TestReplaySkipsCommittedSteps(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    sh("echo a >> @DIR@/ran.txt")
    x = uuid()
    t = now()
    sh("echo %s %s >> @DIR@/ids.txt" % (x, t))
    print("before suspend")
    emit("first")
    suspend("half way")
    sh("echo %s %s >> @DIR@/ids.txt" % (x, t))
    sh("echo b >> @DIR@/ran.txt")
    emit({"x": x})
    return x
`, engine.Spec{})
	wantState(t, j, job.Suspended)
	if j.Reason != "half way" {
		t.Errorf("reason = %q", j.Reason)
	}
	if got := h.lines("ran.txt"); !equalStrings(got, []string{"a"}) {
		t.Fatalf("ran.txt after the first run = %v", got)
	}
	if got := h.doneKeys(j.ID); !equalStrings(got, []string{"1", "2", "3", "4", "5"}) {
		t.Errorf("journal after suspend() = %v, want 1..5 (suspend is a step)", got)
	}
	if j.Steps != 5 {
		t.Errorf("job.Steps = %d, want 5", j.Steps)
	}

	j = h.resume(j.ID)
	wantState(t, j, job.Completed)
	if got := h.lines("ran.txt"); !equalStrings(got, []string{"a", "b"}) {
		t.Errorf("ran.txt after the replay = %v, want [a b]: a committed step ran again", got)
	}
	ids := h.lines("ids.txt")
	if len(ids) != 2 || ids[0] != ids[1] {
		t.Errorf("uuid()/now() differ between the run and its replay: %q", ids)
	}
	if j.Runs != 2 {
		t.Errorf("job.Runs = %d, want 2", j.Runs)
	}
	if j.Steps != 7 {
		t.Errorf("job.Steps = %d, want 7", j.Steps)
	}
	if got := h.output(j.ID); len(got) != 2 || got[0] != `"first"` || !strings.HasPrefix(got[1], `{"x":"`) {
		t.Errorf("output = %v: replayed emit() must not be stored twice", got)
	}
	if got := h.logs(j.ID); len(got) != 1 || got[0] != "before suspend" {
		t.Errorf("log = %q: a replayed print() must not be stored twice", got)
	}
	if string(j.Result) == "" || !strings.Contains(string(j.Result), strings.Fields(ids[0])[0]) {
		t.Errorf("result = %s, want the uuid", j.Result)
	}

	// A completed job is not taken again.
	if _, err := h.eng.Claim(h.ctx, j.ID, engine.Resumable); !errors.Is(err, job.ErrWrongState) {
		t.Errorf("claiming a completed job: %v, want ErrWrongState", err)
	}
}

// A failed job resumed reruns the failed step; the steps before it, which
// the failure committed, replay.
func TestResumeFailedJobRerunsFailedStepOnly(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    sh("echo a >> @DIR@/ran.txt")
    sh("echo b >> @DIR@/ran.txt; test -e @DIR@/fixed")
    sh("echo c >> @DIR@/ran.txt")
`, engine.Spec{})
	wantState(t, j, job.Failed)
	for _, w := range []string{"step 2 (sh on local) failed", "exit code 1", "main.star:4:7", "job " + j.ID} {
		if !strings.Contains(j.Error, w) {
			t.Errorf("error %q does not contain %q", j.Error, w)
		}
	}
	jr := h.journal(j.ID)
	if jr["1"].Status != job.StepDone || jr["2"].Status != job.StepFailed {
		t.Errorf("journal after failure: %+v", jr)
	}
	h.touch("fixed")
	j = h.resume(j.ID)
	wantState(t, j, job.Completed)
	if got := h.lines("ran.txt"); !equalStrings(got, []string{"a", "b", "b", "c"}) {
		t.Errorf("ran.txt = %v, want [a b b c]", got)
	}
	if j.Error != "" {
		t.Errorf("a completed job keeps the old error %q", j.Error)
	}
}

// Step keys are positions: N in a thread, P/bI/N inside branch I of the
// parallel construct at position P, nesting as deep as the script does.
func TestStepKeysNestedBranches(t *testing.T) {
	h := newHarness(t)
	wf := `
def main():
    sh("echo 1")
    now()
    uuid()
    def branch(x):
        sh("echo item %d" % x)
        def p1():
            sh("echo p1")
        def p2():
            sh("echo p2")
            sh("echo p2b")
            return x
        r = parallel(p1, p2)
        sh("echo after %d" % x)
        return r
    res = foreach_parallel([10, 20, 30], branch, throttle=2)
    sh("echo end")
    emit(res)
`
	j := h.run(wf, engine.Spec{Persist: job.PersistAlways})
	wantState(t, j, job.Completed)
	want := []string{"1", "2", "3", "5"}
	for b := 1; b <= 3; b++ {
		p := "4/b" + string(rune('0'+b)) + "/"
		want = append(want, p+"1", p+"2/b1/1", p+"2/b2/1", p+"2/b2/2", p+"3")
	}
	sort.Strings(want)
	got := h.doneKeys(j.ID)
	if !equalStrings(got, want) {
		t.Errorf("journal keys:\n got  %v\n want %v", got, want)
	}
	if out := h.output(j.ID); len(out) != 1 || out[0] != "[[null,10],[null,20],[null,30]]" {
		t.Errorf("output = %v", out)
	}
	// Branch I runs item I, wherever the throttle scheduled it.
	jr := h.journal(j.ID)
	for b, item := range []string{"10", "20", "30"} {
		k := "4/b" + string(rune('1'+b)) + "/1"
		if !strings.Contains(string(jr[k].Result), "item "+item) {
			t.Errorf("step %s result %s, want item %s", k, jr[k].Result, item)
		}
	}

	// The same workflow run again keys and digests every step alike.
	j2 := h.run(wf, engine.Spec{Persist: job.PersistAlways})
	jr2 := h.journal(j2.ID)
	for k, s := range jr {
		if s2, ok := jr2[k]; !ok || s2.Digest != s.Digest || s2.Activity != s.Activity {
			t.Errorf("step %s differs between two runs: %+v vs %+v", k, s, s2)
		}
	}
}

// A journal that does not fit the script fails the job with an error that
// names both the recorded and the current activity.
func TestReplayMismatchNamesBoth(t *testing.T) {
	h := newHarness(t)
	j := h.start(`
def main():
    sh("echo hi >> @DIR@/ran.txt")
`, engine.Spec{})
	// The journal says step 1 was a now() called elsewhere.
	err := h.st.Apply(h.ctx, &job.Update{JobID: j.ID, Owner: j.Owner, Steps: []job.Step{{
		Key: "1", Activity: "now", Digest: "0123456789abcdef", Status: job.StepDone,
		Result: []byte(`"2020-01-01T00:00:00Z"`), Position: "main.star:9:9", Attempts: 1, Started: time.Now(), Ended: time.Now(),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	j = h.execute(h.job(j.ID)) // as stored: it has a journal now
	wantState(t, j, job.Failed)
	for _, w := range []string{"replay mismatch at step 1", "now", "sh", "0123456789abcdef", "main.star:9:9", "main.star:3:7"} {
		if !strings.Contains(j.Error, w) {
			t.Errorf("error %q does not contain %q", j.Error, w)
		}
	}
	if h.exists("ran.txt") {
		t.Errorf("the mismatching step ran")
	}

	// Same activity, other arguments: both digests named.
	j2 := h.start(`
def main():
    sh("echo new")
`, engine.Spec{})
	err = h.st.Apply(h.ctx, &job.Update{JobID: j2.ID, Owner: j2.Owner, Steps: []job.Step{{
		Key: "1", Activity: "sh", Digest: "ffffffffffffffff", Status: job.StepDone,
		Result: []byte(`{"stdout":"old\n","stderr":"","code":0,"host":"local","duration_ms":1}`), Attempts: 1, Started: time.Now(),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	j2 = h.execute(h.job(j2.ID))
	wantState(t, j2, job.Failed)
	if !strings.Contains(j2.Error, "ffffffffffffffff") || strings.Count(j2.Error, "sh") < 2 {
		t.Errorf("error %q does not name the recorded digest and both activities", j2.Error)
	}
}

// resume --upgrade: a new source whose steps fit the journal takes over;
// one that does not is refused naming the first differing step, and the
// job keeps its source.
func TestUpgrade(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    sh("echo one >> @DIR@/ran.txt")
    suspend()
    sh("echo old >> @DIR@/ran.txt")
`, engine.Spec{})
	wantState(t, j, job.Suspended)
	oldDigest := j.Digest

	bad := h.source(`
def main():
    now()
    suspend()
    sh("echo new >> @DIR@/ran.txt")
`)
	cj, err := h.eng.Claim(h.ctx, j.ID, engine.Resumable)
	if err != nil {
		t.Fatal(err)
	}
	err = h.eng.Upgrade(h.ctx, cj, bad)
	if err == nil {
		t.Fatal("upgrade to a source that does not fit the journal succeeded")
	}
	for _, w := range []string{"step 1", "sh", "now", "refusing to upgrade job " + j.ID} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("upgrade error %q does not contain %q", err, w)
		}
	}
	if got := h.job(j.ID).Digest; got != oldDigest {
		t.Errorf("a refused upgrade changed the job's source")
	}

	good := h.source(`
def main():
    sh("echo one >> @DIR@/ran.txt")
    suspend()
    sh("echo new >> @DIR@/ran.txt")
`)
	if err := h.eng.Upgrade(h.ctx, cj, good); err != nil {
		t.Fatalf("upgrade to a fitting source: %v", err)
	}
	if got := h.job(j.ID).Digest; got != good.Digest {
		t.Errorf("after Upgrade the stored job's digest = %s, want the new source's %s (the store ignores Update.Digest)", got[:12], good.Digest[:12])
	}
	// As drover resume --upgrade does: release the job queued, then take
	// it up again from the store.
	queued := job.Queued
	if err := h.st.Apply(h.ctx, &job.Update{JobID: cj.ID, Owner: cj.Owner, State: &queued, Release: true}); err != nil {
		t.Fatal(err)
	}
	j = h.resume(j.ID)
	wantState(t, j, job.Completed)
	if got := h.lines("ran.txt"); !equalStrings(got, []string{"one", "new"}) {
		t.Errorf("ran.txt = %v, want [one new]", got)
	}
}

// The engine compiles a workflow once, however many jobs run it.
func TestEngineCompilesOncePerSource(t *testing.T) {
	h := newHarness(t)
	wf := "def main(n=1):\n    sh(\"true\")\n    return n\n"
	for i := 0; i < 5; i++ {
		j := h.run(wf, engine.Spec{Params: []string{"n=" + string(rune('0'+i))}})
		wantState(t, j, job.Completed)
	}
	if n := h.eng.Cache().Compiles(); n != 1 {
		t.Errorf("Compiles() = %d after five jobs of one workflow, want 1", n)
	}
}
