package engine_test

import (
	"encoding/json"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// step_id() is the idempotency key of the next step: the same in every
// replay, and the one the command sees as $DROVER_JOB/$DROVER_STEP.
func TestStepID(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    a = step_id()
    r = sh("echo $DROVER_JOB/$DROVER_STEP")
    def br(x):
        i = step_id()
        return [i, sh("echo $DROVER_JOB/$DROVER_STEP").stdout.strip()]
    b = foreach_parallel([1, 2], br)
    emit([a, r.stdout.strip()], b)
    suspend()
    emit(step_id())
`, engine.Spec{})
	wantState(t, j, job.Suspended)
	j = h.resume(j.ID)
	wantState(t, j, job.Completed)
	out := h.output(j.ID)
	if len(out) != 3 {
		t.Fatalf("output %v", out)
	}
	id := j.ID
	if want := `["` + id + `/1","` + id + `/1"]`; out[0] != want {
		t.Errorf("step_id() and the command's step: %s, want %s", out[0], want)
	}
	if want := `[["` + id + `/2/b1/1","` + id + `/2/b1/1"],["` + id + `/2/b2/1","` + id + `/2/b2/1"]]`; out[1] != want {
		t.Errorf("in branches: %s, want %s", out[1], want)
	}
	if want := `"` + id + `/4"`; out[2] != want {
		t.Errorf("after a replayed suspend: %s, want %s", out[2], want)
	}
}

// Two branches waiting for two signals: the job waits for both, and a
// signal wakes only its own branch.
func TestWaitInParallelBranches(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    def a():
        return wait("alpha")["v"]
    def b():
        return wait("beta")["v"]
    r = parallel(a, b)
    sh("echo done >> @DIR@/ran.txt")
    return r
`, engine.Spec{})
	wantState(t, j, job.Waiting)
	got := append([]string(nil), j.WaitFor...)
	sort.Strings(got)
	if !equalStrings(got, []string{"alpha", "beta"}) {
		// The branch that reached wait() second saw the first one's halt
		// and never registered its signal: "beta" would be refused.
		t.Fatalf("two branches wait for alpha and beta, the job waits for %v only", j.WaitFor)
	}
	if _, err := h.eng.Signal(h.ctx, j.ID, "beta", json.RawMessage(`{"v": 2}`), "t"); err != nil {
		t.Fatal(err)
	}
	j = h.resume(j.ID)
	wantState(t, j, job.Waiting)
	if !equalStrings(j.WaitFor, []string{"alpha"}) {
		t.Errorf("after beta: waiting for %v, want alpha only", j.WaitFor)
	}
	if _, err := h.eng.Signal(h.ctx, j.ID, "alpha", json.RawMessage(`{"v": 1}`), "t"); err != nil {
		t.Fatal(err)
	}
	j = h.resume(j.ID)
	wantState(t, j, job.Completed)
	if string(j.Result) != "[1,2]" {
		t.Errorf("result %s", j.Result)
	}
	if n := h.count("ran.txt", "done"); n != 1 {
		t.Errorf("ran %d times", n)
	}
}

// A job waiting for a signal can be suspended and stopped by an operator
// without an engine; a suspended one resumes to wait again.
func TestOperatorActionsOnWaitingJob(t *testing.T) {
	h := newHarness(t)
	j := h.run("def main():\n    wait(\"go\")\n    sh(\"echo after >> @DIR@/ran.txt\")\n", engine.Spec{})
	wantState(t, j, job.Waiting)
	s, err := h.eng.Request(h.ctx, j.ID, job.ActionSuspend, "hold on")
	if err != nil {
		t.Fatal(err)
	}
	wantState(t, s, job.Suspended)
	j = h.resume(j.ID)
	wantState(t, j, job.Waiting)
	if _, err := h.eng.Signal(h.ctx, j.ID, "go", nil, "t"); err != nil {
		t.Fatal(err)
	}
	j = h.resume(j.ID)
	wantState(t, j, job.Completed)
	if h.count("ran.txt", "after") != 1 {
		t.Errorf("ran.txt %v", h.lines("ran.txt"))
	}
}

// print() at module level runs at every load of the job; each distinct
// line is kept once.
func TestModuleLevelPrints(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
print("loading one")
print("loading two")
def main():
    print("in main")
`, engine.Spec{})
	wantState(t, j, job.Completed)
	logs := strings.Join(h.logs(j.ID), "|")
	for _, w := range []string{"loading one", "loading two", "in main"} {
		if !strings.Contains(logs, w) {
			t.Errorf("log %q lacks %q", logs, w)
		}
	}
}

// Prints and sh output lines of a step keep their order and do not
// collide with each other in the log.
func TestLogRecords(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    print("before")
    sh("echo out1; echo err1 >&2; echo out2")
    print("after")
`, engine.Spec{})
	wantState(t, j, job.Completed)
	logs := h.logs(j.ID)
	got := map[string]bool{}
	for _, l := range logs {
		got[l] = true
	}
	for _, w := range []string{"before", "out1", "err1", "out2", "after"} {
		if !got[w] {
			t.Errorf("log %q lacks %q", logs, w)
		}
	}
}

// The job-wide timeout and durations read as Go durations or seconds.
func TestDurations(t *testing.T) {
	h := newHarness(t, func(o *engine.Options) { o.ShortSleep = 2 * time.Second })
	j := h.run(`
def main():
    sleep(0.01)
    sleep("10ms")
    sleep(0)
`, engine.Spec{})
	wantState(t, j, job.Completed)
	for wf, want := range map[string]string{
		"def main():\n    sleep(\"soon\")\n":             `"soon" is not a duration`,
		"def main():\n    sleep(-1)\n":                   "negative duration",
		"def main():\n    sleep([1])\n":                  "want a duration string",
		"def main():\n    sh(\"true\", timeout=\"x\")\n": "sh: timeout",
	} {
		j := h.run(wf, engine.Spec{})
		wantState(t, j, job.Failed)
		if !strings.Contains(j.Error, want) || !strings.Contains(j.Error, "main.star:2:") {
			t.Errorf("%q: error %q, want %q with the position", wf, j.Error, want)
		}
	}
}
