package engine_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

func TestWaitSignal(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    sh("echo before >> @DIR@/ran.txt")
    a = wait("go-live")
    sh("echo after >> @DIR@/ran.txt")
    b = wait("scalar")
    emit(a, b)
    return a["by"]
`, engine.Spec{})
	wantState(t, j, job.Waiting)
	if !equalStrings(j.WaitFor, []string{"go-live"}) || !j.WakeAt.IsZero() {
		t.Errorf("waiting for %v until %v, want go-live with no wake time", j.WaitFor, j.WakeAt)
	}
	if held := h.eng.Held(); len(held) != 0 {
		t.Errorf("a waiting job is still held by the engine: %v", held)
	}
	if j.Owner != "" {
		t.Errorf("a waiting job keeps its lease: owner %q", j.Owner)
	}
	jr := h.journal(j.ID)
	if jr["1"].Status != job.StepDone || jr["2"].Status != job.StepPending || jr["2"].Activity != "wait" {
		t.Errorf("journal while waiting: %+v", jr)
	}

	// Not the awaited name; not a waiting job.
	if _, err := h.eng.Signal(h.ctx, j.ID, "other", nil, "bob"); !errors.Is(err, job.ErrNotWaiting) {
		t.Errorf("signal of another name: %v, want ErrNotWaiting", err)
	}
	if _, err := h.eng.Signal(h.ctx, j.ID, "go-live", json.RawMessage(`{bad`), "bob"); !errors.Is(err, engine.ErrUsage) {
		t.Errorf("signal with invalid JSON: %v, want a usage error", err)
	}
	sj, err := h.eng.Signal(h.ctx, j.ID, "go-live", json.RawMessage(`{"ok": true, "by": "mallory"}`), "alice")
	if err != nil {
		t.Fatal(err)
	}
	wantState(t, sj, job.Queued)
	if _, err := h.eng.Signal(h.ctx, j.ID, "go-live", nil, "alice"); !errors.Is(err, job.ErrNotWaiting) {
		t.Errorf("second signal to a queued job: %v, want ErrNotWaiting", err)
	}

	j = h.resume(j.ID)
	wantState(t, j, job.Waiting)
	if !equalStrings(j.WaitFor, []string{"scalar"}) {
		t.Errorf("now waiting for %v", j.WaitFor)
	}
	if _, err := h.eng.Signal(h.ctx, j.ID, "scalar", json.RawMessage(`42`), ""); err != nil {
		t.Fatal(err)
	}
	j = h.resume(j.ID)
	wantState(t, j, job.Completed)
	if got := h.lines("ran.txt"); !equalStrings(got, []string{"before", "after"}) {
		t.Errorf("ran.txt = %v", got)
	}
	out := h.output(j.ID)
	if len(out) != 2 {
		t.Fatalf("output = %v", out)
	}
	var a, b map[string]any
	_ = json.Unmarshal([]byte(out[0]), &a)
	_ = json.Unmarshal([]byte(out[1]), &b)
	if a["ok"] != true || a["by"] != "alice" || a["at"] == nil {
		t.Errorf("wait() returned %s: want the payload with by=alice (the sender, not the payload's by) and at", out[0])
	}
	if b["value"] != float64(42) || b["by"] == "" || b["by"] == nil {
		t.Errorf("wait() of a scalar payload returned %s, want value=42 and the engine's sender", out[1])
	}
	if sigs, _ := h.st.Signals(h.ctx, j.ID); len(sigs) != 0 {
		t.Errorf("consumed signals are still stored: %v", sigs)
	}
}

func TestWaitTimeoutDefault(t *testing.T) {
	h := newHarness(t)
	start := time.Now()
	j := h.run(`
def main():
    v = wait("approval", timeout="300ms", default={"by": "nobody"})
    emit(v)
`, engine.Spec{})
	wantState(t, j, job.Waiting)
	if j.WakeAt.Before(start.Add(300*time.Millisecond)) || j.WakeAt.After(time.Now().Add(300*time.Millisecond)) {
		t.Errorf("wake at %v, want 300ms after the wait began (%v)", j.WakeAt, start)
	}
	wake := j.WakeAt

	// Resumed before the deadline: it waits again, for the same deadline.
	j = h.resume(j.ID)
	wantState(t, j, job.Waiting)
	if !j.WakeAt.Equal(wake) {
		t.Errorf("resuming early moved the deadline from %v to %v", wake, j.WakeAt)
	}
	if due, _ := h.st.Due(h.ctx, time.Now(), 10); len(due) != 0 {
		t.Errorf("due before the deadline: %v", due)
	}
	time.Sleep(time.Until(wake) + 10*time.Millisecond)
	if due, _ := h.st.Due(h.ctx, time.Now(), 10); len(due) != 1 || due[0] != j.ID {
		t.Errorf("due after the deadline: %v, want [%s]", due, j.ID)
	}
	j = h.resume(j.ID)
	wantState(t, j, job.Completed)
	if out := h.output(j.ID); len(out) != 1 || out[0] != `{"by":"nobody"}` {
		t.Errorf("output = %v, want the default", out)
	}
}

func TestWaitTimeoutWithoutDefaultFails(t *testing.T) {
	h := newHarness(t)
	j := h.run(`
def main():
    wait("approval", timeout="100ms")
    sh("echo never >> @DIR@/ran.txt")
`, engine.Spec{})
	wantState(t, j, job.Waiting)
	time.Sleep(time.Until(j.WakeAt) + 10*time.Millisecond)
	j = h.resume(j.ID)
	wantState(t, j, job.Failed)
	for _, w := range []string{`no signal "approval" arrived within 100ms`, "main.star:3:9", "step 1"} {
		if !strings.Contains(j.Error, w) {
			t.Errorf("error %q does not contain %q", j.Error, w)
		}
	}
	if h.exists("ran.txt") {
		t.Error("the step after a failed wait ran")
	}
}

// A sleep longer than ShortSleep unloads the job with a wake time; the
// wake time is kept when the job is resumed early; Drive sleeps through.
func TestSleepUnloads(t *testing.T) {
	h := newHarness(t, func(o *engine.Options) { o.ShortSleep = 50 * time.Millisecond })
	wf := `
def main():
    sh("echo a >> @DIR@/ran.txt")
    sleep("10ms")
    sleep("600ms")
    sh("date +%s%N >> @DIR@/woke.txt")
`
	start := time.Now()
	j := h.run(wf, engine.Spec{})
	wantState(t, j, job.Waiting)
	if len(j.WaitFor) != 0 || j.WakeAt.IsZero() {
		t.Fatalf("sleeping job waits for %v until %v", j.WaitFor, j.WakeAt)
	}
	wake := j.WakeAt
	if wake.Before(start.Add(600*time.Millisecond)) || wake.After(time.Now().Add(600*time.Millisecond)) {
		t.Errorf("wake at %v, want about 600ms after %v", wake, start)
	}
	if held := h.eng.Held(); len(held) != 0 {
		t.Errorf("a sleeping job is still held: %v", held)
	}
	jr := h.journal(j.ID)
	if jr["2"].Status != job.StepDone || jr["3"].Status != job.StepPending || len(jr["3"].Data) == 0 {
		t.Errorf("journal while sleeping: %+v", jr)
	}

	// Early resume: still asleep, same wake time.
	j = h.resume(j.ID)
	wantState(t, j, job.Waiting)
	if !j.WakeAt.Equal(wake) {
		t.Errorf("an early resume restarted the timer: wake %v -> %v", wake, j.WakeAt)
	}

	cj, err := h.eng.Claim(h.ctx, j.ID, engine.Resumable)
	if err != nil {
		t.Fatal(err)
	}
	j, err = h.eng.Drive(h.ctx, cj, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantState(t, j, job.Completed)
	if h.count("ran.txt", "a") != 1 {
		t.Errorf("ran.txt = %v", h.lines("ran.txt"))
	}
	woke := h.lines("woke.txt")
	if len(woke) != 1 {
		t.Fatalf("woke.txt = %v", woke)
	}
	var ns int64
	_ = json.Unmarshal([]byte(woke[0]), &ns)
	at := time.Unix(0, ns)
	if at.Before(wake) {
		t.Errorf("the step after sleep ran at %v, before the wake time %v", at, wake)
	}
	if at.After(wake.Add(2 * time.Second)) {
		t.Errorf("the step after sleep ran at %v, long after the wake time %v", at, wake)
	}
}

func TestShortSleepStaysLoaded(t *testing.T) {
	h := newHarness(t, func(o *engine.Options) { o.ShortSleep = 500 * time.Millisecond })
	start := time.Now()
	j := h.run(`
def main():
    sleep("150ms")
    sleep(0.05)
`, engine.Spec{})
	wantState(t, j, job.Completed)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("two sleeps of 200ms in all took %s", d)
	}
	if j.Runs != 1 {
		t.Errorf("a short sleep unloaded the job: runs = %d", j.Runs)
	}
}

// An operator's suspend takes effect at the next safe point; the step in
// flight completes and the job resumes after it.
func TestOperatorSuspend(t *testing.T) {
	h := newHarness(t)
	j := h.start(`
def main():
    sh("echo a >> @DIR@/ran.txt")
    `+gate("g")+`
    sh("echo c >> @DIR@/ran.txt")
`, engine.Spec{})
	done := h.execAsync(h.eng, j)
	h.await("g")
	if _, err := h.eng.Request(h.ctx, j.ID, job.ActionSuspend, "maintenance window"); err != nil {
		t.Fatal(err)
	}
	h.open("g")
	j = <-done
	wantState(t, j, job.Suspended)
	if j.Reason != "maintenance window" {
		t.Errorf("reason = %q", j.Reason)
	}
	if h.exists("ran.txt") && h.count("ran.txt", "c") != 0 {
		t.Errorf("the step after the safe point ran: %v", h.lines("ran.txt"))
	}
	if got := h.doneKeys(j.ID); !equalStrings(got, []string{"1", "2"}) {
		t.Errorf("journal at suspension = %v, want [1 2]", got)
	}
	j = h.resume(j.ID)
	wantState(t, j, job.Completed)
	if got := h.lines("ran.txt"); !equalStrings(got, []string{"a", "c"}) {
		t.Errorf("ran.txt = %v", got)
	}
	// A job nobody holds is suspended at once; stopping ends it.
	j2 := h.run("def main():\n    suspend()\n", engine.Spec{})
	wantState(t, j2, job.Suspended)
	s, err := h.eng.Request(h.ctx, j2.ID, job.ActionStop, "no longer needed")
	if err != nil {
		t.Fatal(err)
	}
	wantState(t, s, job.Stopped)
}

// An operator's stop cancels the running step and kills its process.
func TestOperatorStopKillsStep(t *testing.T) {
	h := newHarness(t)
	marker := uniqueSleep()
	j := h.start(`
def main():
    sh("touch @DIR@/started; `+marker+`")
    sh("echo never >> @DIR@/ran.txt")
`, engine.Spec{})
	done := h.execAsync(h.eng, j)
	eventually(t, 5*time.Second, "the step started", func() bool { return h.exists("started") })
	eventually(t, 5*time.Second, "the process is visible", func() bool { return len(pgrep(t, marker)) > 0 })
	start := time.Now()
	if _, err := h.eng.Request(h.ctx, j.ID, job.ActionStop, "abort"); err != nil {
		t.Fatal(err)
	}
	j = <-done
	wantState(t, j, job.Stopped)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("stop took %s", d)
	}
	if pids := pgrep(t, marker); len(pids) > 0 {
		t.Errorf("stopped step left processes running: %v", pids)
	}
	if h.exists("ran.txt") {
		t.Error("the step after a stop ran")
	}
}

func TestOnErrorSuspend(t *testing.T) {
	for _, p := range []job.Persist{job.PersistCheckpoints, job.PersistNever} {
		t.Run(string(p), func(t *testing.T) {
			h := newHarness(t)
			j := h.run(`
def main():
    sh("echo a >> @DIR@/ran.txt")
    sh("echo b >> @DIR@/ran.txt; test -e @DIR@/fixed || { echo 'disk full' >&2; exit 3; }")
    sh("echo c >> @DIR@/ran.txt")
`, engine.Spec{OnError: job.OnErrorSuspend, Persist: p})
			wantState(t, j, job.Suspended)
			for _, w := range []string{"--on-error suspend", "step 2", "exit code 3", "disk full"} {
				if !strings.Contains(j.Reason, w) {
					t.Errorf("reason %q does not contain %q", j.Reason, w)
				}
			}
			if !strings.Contains(j.Error, "disk full") {
				t.Errorf("error %q", j.Error)
			}
			h.touch("fixed")
			j = h.resume(j.ID)
			wantState(t, j, job.Completed)
			if got := h.lines("ran.txt"); !equalStrings(got, []string{"a", "b", "b", "c"}) {
				t.Errorf("ran.txt = %v, want [a b b c]: only the failed step runs again", got)
			}
		})
	}
}

// A non-step error (a bug in the script) fails the job even under
// --on-error suspend.
func TestOnErrorSuspendScriptErrorFails(t *testing.T) {
	h := newHarness(t)
	j := h.run("def main():\n    x = {}\n    return x[\"missing\"]\n", engine.Spec{OnError: job.OnErrorSuspend})
	wantState(t, j, job.Failed)
	if !strings.Contains(j.Error, "main.star:3:13") || !strings.Contains(j.Error, "missing") {
		t.Errorf("error %q", j.Error)
	}
}
