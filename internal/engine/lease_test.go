package engine_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// elsewhere is an engine on another machine: its liveness cannot be
// checked locally, only its lease counts.
const elsewhere = "other-host.example:4242:777"

// While an engine holds a job (and renews its lease past the lease's
// length), nobody else can claim it; once it lets go, another can.
func TestLeaseHeldUntilReleased(t *testing.T) {
	h := newHarness(t, func(o *engine.Options) {
		o.Lease = 300 * time.Millisecond
		o.Poll = 50 * time.Millisecond
	})
	j := h.start(`
def main():
    sh("echo a >> @DIR@/ran.txt")
    `+gate("g")+`
    suspend("let go")
    sh("echo b >> @DIR@/ran.txt")
`, engine.Spec{})
	done := h.execAsync(h.eng, j)
	h.await("g")
	for i := 0; i < 4; i++ { // 4 x 250ms: well past the 300ms lease
		stored := h.job(j.ID)
		if stored.Owner != h.eng.Owner() || !stored.LeaseUntil.After(time.Now()) {
			t.Errorf("lease not renewed: owner %q until %v (now %v)", stored.Owner, stored.LeaseUntil, time.Now())
		}
		if !h.eng.IsHeld(stored) || h.eng.EffectiveState(stored) != job.Running {
			t.Errorf("a job held by a live engine reads %s", h.eng.EffectiveState(stored))
		}
		_, err := h.st.Claim(h.ctx, j.ID, elsewhere, time.Now().Add(time.Minute), "", engine.Resumable)
		if !errors.Is(err, job.ErrHeld) {
			t.Fatalf("another engine claimed a held job: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	h.open("g")
	j = <-done
	wantState(t, j, job.Suspended)
	if j.Owner != "" {
		t.Errorf("a suspended job keeps its owner %q", j.Owner)
	}
	cj, err := h.st.Claim(h.ctx, j.ID, elsewhere, time.Now().Add(time.Minute), "", engine.Resumable)
	if err != nil {
		t.Fatalf("claim of a released job: %v", err)
	}
	if cj.Owner != elsewhere || cj.State != job.Running || cj.Runs != 2 {
		t.Errorf("claimed job: owner %q state %s runs %d", cj.Owner, cj.State, cj.Runs)
	}
}

// Two engines are two lease owners, even in one process (a server, a
// test): the second cannot take a job the first is running.
func TestSecondEngineCannotClaimHeldJob(t *testing.T) {
	h := newHarness(t)
	other := h.newEngine()
	if h.eng.Owner() == other.Owner() {
		t.Errorf("two engines share the owner id %q: each would take the other's jobs", other.Owner())
	}
	j := h.start(`
def main():
    `+gate("g")+`
    sh("echo done >> @DIR@/ran.txt")
`, engine.Spec{})
	done := h.execAsync(h.eng, j)
	h.await("g")
	if cj, err := other.Claim(h.ctx, j.ID, engine.Resumable); !errors.Is(err, job.ErrHeld) {
		t.Errorf("a second engine claiming a job the first is running: %v (claimed: %v), want job.ErrHeld", err, cj != nil)
	}
	h.open("g")
	wantState(t, <-done, job.Completed)
	if n := h.count("ran.txt", "done"); n != 1 {
		t.Errorf("the job ran its last step %d times", n)
	}
}

// createHeld stores a running job held by owner until the given time, as
// an engine that then went away would have left it.
func (h *harness) createHeld(owner string, until time.Time) *job.Job {
	h.t.Helper()
	p, err := h.eng.Prepare(h.ctx, engine.Spec{Source: h.source("def main():\n    sh(\"echo ran >> @DIR@/ran.txt\")\n")})
	if err != nil {
		h.t.Fatal(err)
	}
	j := p.Job
	j.State, j.Owner, j.LeaseUntil, j.Started, j.Runs = job.Running, owner, until, time.Now(), 1
	if err := h.st.CreateJobs(h.ctx, p.Source, j); err != nil {
		h.t.Fatal(err)
	}
	return h.job(j.ID)
}

func TestDeadOwnerJobTaken(t *testing.T) {
	h := newHarness(t)
	host, _ := os.Hostname()

	// A process of this machine that exited.
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	deadPID := fmt.Sprintf("%s:%d:%s", host, c.Process.Pid, "12345")
	// A pid that is alive but started at another time: reused.
	reused := fmt.Sprintf("%s:%d:%s", host, os.Getpid(), "1")

	for _, owner := range []string{deadPID, reused} {
		j := h.createHeld(owner, time.Now().Add(time.Hour))
		if s := h.eng.EffectiveState(j); s != job.Interrupted {
			t.Errorf("owner %s: a job whose engine is dead reads %s, want interrupted", owner, s)
		}
		cj, err := h.eng.Claim(h.ctx, j.ID, engine.Resumable)
		if err != nil {
			t.Errorf("owner %s: claiming a dead engine's job: %v", owner, err)
			continue
		}
		if cj.Owner != h.eng.Owner() {
			t.Errorf("claimed job owner %q", cj.Owner)
		}
		wantState(t, h.execute(cj), job.Completed)
	}
	if n := h.count("ran.txt", "ran"); n != 2 {
		t.Errorf("ran %d jobs, want 2", n)
	}

	// An engine elsewhere holds its job until the lease expires.
	live := h.createHeld(elsewhere, time.Now().Add(time.Hour))
	if s := h.eng.EffectiveState(live); s != job.Running {
		t.Errorf("a job held elsewhere reads %s", s)
	}
	if _, err := h.eng.Claim(h.ctx, live.ID, engine.Resumable); !errors.Is(err, job.ErrHeld) {
		t.Errorf("claiming a job held elsewhere: %v, want ErrHeld", err)
	}
	expired := h.createHeld(elsewhere, time.Now().Add(-time.Second))
	if s := h.eng.EffectiveState(expired); s != job.Interrupted {
		t.Errorf("a job whose lease expired reads %s", s)
	}
	cj, err := h.eng.Claim(h.ctx, expired.ID, engine.Resumable)
	if err != nil {
		t.Fatalf("claiming an expired lease: %v", err)
	}
	wantState(t, h.execute(cj), job.Completed)
}

// An engine whose job was taken from it cannot commit anything more.
func TestLeaseLostFencesWrites(t *testing.T) {
	h := newHarness(t)
	j := h.start(`
def main():
    sh("echo a >> @DIR@/ran.txt")
    `+gate("g")+`
    sh("echo b >> @DIR@/ran.txt")
`, engine.Spec{Persist: job.PersistAlways})
	type res struct {
		out *engine.Outcome
		err error
	}
	ch := make(chan res, 1)
	go func() {
		out, err := h.eng.Execute(h.ctx, j, nil)
		ch <- res{out, err}
	}()
	h.await("g")
	// Another engine decides this one is dead and takes the job.
	if _, err := h.st.Claim(h.ctx, j.ID, elsewhere, time.Now().Add(time.Hour), h.eng.Owner(), engine.Resumable); err != nil {
		t.Fatal(err)
	}
	h.open("g")
	r := <-ch
	if r.err != nil {
		t.Fatalf("execute: %v", r.err)
	}
	if !r.out.LeaseLost {
		t.Errorf("outcome %+v: want LeaseLost", r.out)
	}
	stored := h.job(j.ID)
	if stored.Owner != elsewhere || stored.State != job.Running {
		t.Errorf("the fenced engine changed the job: owner %q state %s", stored.Owner, stored.State)
	}
	if got := h.doneKeys(j.ID); !equalStrings(got, []string{"1"}) {
		t.Errorf("journal %v: steps after the loss were committed", got)
	}
	if h.count("ran.txt", "b") != 0 {
		t.Errorf("the engine that lost the job ran its next step")
	}
}
