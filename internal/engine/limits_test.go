package engine_test

import (
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// uniqueSleep is a long sleep command whose command line no other process
// has, so that pgrep finds exactly the processes a test started.
func uniqueSleep() string {
	return fmt.Sprintf("sleep 30.%09d", rand.IntN(1_000_000_000))
}

// pgrep lists the pids of processes whose command line contains pattern.
func pgrep(t *testing.T, pattern string) []string {
	t.Helper()
	out, err := exec.Command("pgrep", "-f", pattern).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 1 {
			return nil
		}
		t.Fatalf("pgrep: %v", err)
	}
	return strings.Fields(string(out))
}

func TestJobTimeout(t *testing.T) {
	h := newHarness(t)
	marker := uniqueSleep()
	start := time.Now()
	j := h.run(`
def main():
    sh("echo a >> @DIR@/ran.txt")
    sh("`+marker+`")
    sh("echo never >> @DIR@/ran.txt")
`, engine.Spec{Timeout: 400 * time.Millisecond})
	wantState(t, j, job.Failed)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a job with --timeout 400ms took %s to fail", d)
	}
	if !strings.Contains(j.Error, "exceeded its --timeout of 400ms") {
		t.Errorf("error = %q", j.Error)
	}
	if pids := pgrep(t, marker); len(pids) > 0 {
		t.Errorf("the timed-out step left processes running: %v", pids)
	}
	if got := h.lines("ran.txt"); !equalStrings(got, []string{"a"}) {
		t.Errorf("ran.txt = %v", got)
	}
	// Under --on-error suspend a timeout still fails the job: it is not a
	// step failure an operator can fix and resume.
	j2 := h.run(`
def main():
    sh("`+uniqueSleep()+`")
`, engine.Spec{Timeout: 300 * time.Millisecond, OnError: job.OnErrorSuspend})
	wantState(t, j2, job.Failed)
	if !strings.Contains(j2.Error, "--timeout") {
		t.Errorf("error = %q", j2.Error)
	}
}

// The job-wide timeout counts from creation, also across a wait.
func TestJobTimeoutWhileWaiting(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    wait("never-sent")
`, engine.Spec{Timeout: 300 * time.Millisecond})
	wantState(t, j, job.Waiting)
	deadline := j.Created.Add(300 * time.Millisecond)
	if !j.WakeAt.Equal(deadline) {
		t.Errorf("a waiting job with --timeout wakes at %v, want its deadline %v", j.WakeAt, deadline)
	}
	time.Sleep(time.Until(deadline) + 10*time.Millisecond)
	j = h.resume(j.ID)
	wantState(t, j, job.Failed)
	if !strings.Contains(j.Error, "--timeout") {
		t.Errorf("error = %q", j.Error)
	}
}

func TestStepTimeoutKillsProcess(t *testing.T) {
	h := newHarness(t)
	marker := uniqueSleep()
	stubborn := uniqueSleep()
	start := time.Now()
	j := h.run(`
def main():
    r = sh("`+marker+`", timeout="300ms", check=False)
`, engine.Spec{})
	wantState(t, j, job.Failed)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a step with timeout=300ms took %s to fail", d)
	}
	for _, w := range []string{"timed out after 300ms", "step 1", "main.star:3:11"} {
		if !strings.Contains(j.Error, w) {
			t.Errorf("error %q does not contain %q", j.Error, w)
		}
	}
	if pids := pgrep(t, marker); len(pids) > 0 {
		t.Errorf("the timed-out command is still running: %v", pids)
	}

	// A command that ignores SIGTERM, with a child of its own, is killed
	// too, and a retry gets its own timeout.
	j = h.run(`
def main():
    sh("trap '' TERM; `+stubborn+` & echo x >> @DIR@/tries.txt; wait", timeout="200ms", retries=1, retry_interval="10ms")
`, engine.Spec{})
	wantState(t, j, job.Failed)
	if n := len(h.lines("tries.txt")); n != 2 {
		t.Errorf("attempts = %d, want 2", n)
	}
	if st := h.journal(j.ID)["1"]; st.Attempts != 2 {
		t.Errorf("journal attempts = %d, want 2", st.Attempts)
	}
	eventually(t, 3*time.Second, "the stubborn processes to be gone", func() bool { return len(pgrep(t, stubborn)) == 0 })
}

func TestRetries(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    sh("echo x >> @DIR@/fail.txt; exit 2", retries=2, retry_interval="10ms")
`, engine.Spec{})
	wantState(t, j, job.Failed)
	if n := len(h.lines("fail.txt")); n != 3 {
		t.Errorf("a step with retries=2 ran %d times, want 3", n)
	}
	if st := h.journal(j.ID)["1"]; st.Attempts != 3 || st.Status != job.StepFailed {
		t.Errorf("journal: attempts %d status %s, want 3 failed", st.Attempts, st.Status)
	}
	if !strings.Contains(j.Error, "after 3 attempts") {
		t.Errorf("error %q does not count the attempts", j.Error)
	}
	logs := strings.Join(h.logs(j.ID), "\n")
	if !strings.Contains(logs, "attempt 1 of 3 failed") || !strings.Contains(logs, "attempt 2 of 3 failed") {
		t.Errorf("the log does not report the failed attempts:\n%s", logs)
	}

	// Succeeds on the third attempt.
	j = h.run(`
def main():
    r = sh("echo x >> @DIR@/flaky.txt; test $(wc -l < @DIR@/flaky.txt) -ge 3 && echo ok", retries=5, retry_interval="10ms")
    return r.stdout.strip()
`, engine.Spec{})
	wantState(t, j, job.Completed)
	if st := h.journal(j.ID)["1"]; st.Attempts != 3 || st.Status != job.StepDone {
		t.Errorf("journal: attempts %d status %s, want 3 done", st.Attempts, st.Status)
	}
	if string(j.Result) != `"ok"` {
		t.Errorf("result %s", j.Result)
	}

	// No retries: one attempt.
	j = h.run("def main():\n    sh(\"echo x >> @DIR@/once.txt; exit 1\")\n", engine.Spec{})
	wantState(t, j, job.Failed)
	if n := len(h.lines("once.txt")); n != 1 {
		t.Errorf("ran %d times, want 1", n)
	}
	if st := h.journal(j.ID)["1"]; st.Attempts != 1 {
		t.Errorf("attempts %d, want 1", st.Attempts)
	}
	// check=False: a non-zero exit is a result.
	j = h.run("def main():\n    return sh(\"exit 4\", check=False, retries=3).code\n", engine.Spec{})
	wantState(t, j, job.Completed)
	if string(j.Result) != "4" {
		t.Errorf("result %s", j.Result)
	}
}

func TestFailFastCancelsSiblings(t *testing.T) {
	h := newHarness(t)
	marker := uniqueSleep()
	start := time.Now()
	j := h.run(`
def main():
    def bad():
        sh("sleep 0.1; exit 7")
    def slow():
        sh("`+marker+`; echo late >> @DIR@/late.txt")
    parallel(bad, slow)
    sh("echo after >> @DIR@/late.txt")
`, engine.Spec{})
	wantState(t, j, job.Failed)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("fail_fast took %s", d)
	}
	for _, w := range []string{"step 1/b1/1", "exit code 7", "main.star:4:11", "in bad"} {
		if !strings.Contains(j.Error, w) {
			t.Errorf("error %q does not contain %q", j.Error, w)
		}
	}
	if pids := pgrep(t, marker); len(pids) > 0 {
		t.Errorf("the cancelled sibling left processes running: %v", pids)
	}
	if h.exists("late.txt") {
		t.Errorf("late.txt = %v", h.lines("late.txt"))
	}

	// foreach_parallel with a throttle of one: items after the failed one
	// never start.
	j = h.run(`
def main():
    def f(x):
        sh("echo %d >> @DIR@/items.txt; test %d -ne 2" % (x, x))
    foreach_parallel([1, 2, 3, 4], f, throttle=1)
`, engine.Spec{})
	wantState(t, j, job.Failed)
	if got := h.lines("items.txt"); !equalStrings(got, []string{"1", "2"}) {
		t.Errorf("items run = %v, want [1 2]", got)
	}
	if !strings.Contains(j.Error, "step 1/b2/1") {
		t.Errorf("error %q does not name the failed branch's step", j.Error)
	}

	// fail_fast=False: the siblings run to their end, the failure is
	// reported after.
	j = h.run(`
def main():
    def f(x):
        sh("sleep 0.%d; echo %d >> @DIR@/all.txt; test %d -ne 1" % (x, x, x))
    foreach_parallel([1, 2, 3], f, fail_fast=False)
`, engine.Spec{})
	wantState(t, j, job.Failed)
	if n := len(h.lines("all.txt")); n != 3 {
		t.Errorf("fail_fast=False ran %d of 3 items", n)
	}
}

// Several failed branches: the job's error says how many failed.
func TestMultiBranchFailureReported(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    def f(x):
        sh("exit %d" % x)
    foreach_parallel([1, 2, 3], f, fail_fast=False)
`, engine.Spec{})
	wantState(t, j, job.Failed)
	if !strings.Contains(j.Error, "3 of 3 branches failed") {
		t.Errorf("three branches failed but the job's error tells of one only: %q", j.Error)
	}
}

// Branches see the caller's values frozen: mutating them is an error
// naming the position, not a data race.
func TestBranchValuesFrozen(t *testing.T) {
	h := newHarness(t)
	for _, wf := range []string{`
def main():
    acc = []
    def add(x):
        acc.append(x)
    foreach_parallel([1, 2], add)
`, `
def main():
    d = {"n": 0}
    def inc():
        d["n"] += 1
    parallel(inc, inc)
`, `
def main():
    items = [[1], [2]]
    def f(x):
        x.append(3)
    foreach_parallel(items, f)
`} {
		j := h.run(wf, engine.Spec{})
		wantState(t, j, job.Failed)
		if !strings.Contains(j.Error, "frozen") || !strings.Contains(j.Error, "main.star:") {
			t.Errorf("error %q does not say the value is frozen with a position", j.Error)
		}
	}
	// Returning results works; locals of the branch are its own.
	j := h.run(`
def main():
    base = [1, 2]
    def f(x):
        mine = list(base)
        mine.append(x)
        return mine
    return foreach_parallel([3, 4], f)
`, engine.Spec{})
	wantState(t, j, job.Completed)
	if string(j.Result) != "[[1,2,3],[1,2,4]]" {
		t.Errorf("result %s", j.Result)
	}
}

func TestRunawayLoop(t *testing.T) {
	h := newHarness(t, func(o *engine.Options) { o.MaxSteps = 200_000 })
	start := time.Now()
	j := h.run(`
def main():
    sh("echo a >> @DIR@/ran.txt")
    n = 0
    while True:
        n += 1
`, engine.Spec{})
	wantState(t, j, job.Failed)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("runaway loop took %s to fail", d)
	}
	if !strings.Contains(j.Error, "too many steps") || !strings.Contains(j.Error, "main.star:6") {
		t.Errorf("error %q: want a clean 'too many steps' with the loop's position", j.Error)
	}
	// In a branch too.
	j = h.run(`
def main():
    def spin(x):
        while True:
            pass
    foreach_parallel([1], spin)
`, engine.Spec{})
	wantState(t, j, job.Failed)
	if !strings.Contains(j.Error, "too many steps") {
		t.Errorf("error %q", j.Error)
	}
	// Ordinary work under the limit is fine.
	j = h.run("def main():\n    n = 0\n    for i in range(1000):\n        n += i\n    return n\n", engine.Spec{})
	wantState(t, j, job.Completed)
}

// Unknown names and usage errors surface when the job is prepared, not
// after it started.
func TestPrepareErrors(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct{ wf, want string }{
		{"def main(:\n", "syntax error"},
		{"def main():\n    undefined_thing()\n", "undefined_thing"},
		{"x = 1\n", "defines no main()"},
		{"sh('echo at load')\ndef main():\n    pass\n", "only be called from main()"},
		// fail_step is resolvable (script.Predeclared) but no builtin binds it.
		{"def main():\n    fail_step('x')\n", "fail_step"},
	} {
		_, err := h.eng.Prepare(h.ctx, engine.Spec{Source: h.source(tc.wf)})
		if err == nil {
			t.Errorf("%q: Prepare succeeded, want an error about %s", tc.wf, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q does not mention %q", tc.wf, err, tc.want)
		}
	}
	if _, err := h.eng.Prepare(h.ctx, engine.Spec{Source: h.source("def main(n=1):\n    pass\n"), Params: []string{"n=x"}}); err == nil {
		t.Error("a bad parameter was accepted")
	}
	if _, err := h.eng.Prepare(h.ctx, engine.Spec{Source: h.source("def main():\n    pass\n"), Persist: "sometimes"}); err == nil {
		t.Error("a bad --persist was accepted")
	}
}

// A float parameter keeps its type in the job (SPEC 2: -p takes the type
// of the parameter's default).
func TestFloatParamType(t *testing.T) {
	h := newHarness(t)
	j := h.run("def main(ratio=0.5):\n    return type(ratio)\n", engine.Spec{Params: []string{"ratio=2"}})
	wantState(t, j, job.Completed)
	if string(j.Result) != `"float"` {
		t.Errorf("main(ratio=0.5) run with -p ratio=2 sees ratio as %s, want float", j.Result)
	}
}
