package engine_test

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// Many drover step processes of one script start the same block at once
// (engines stand for the processes): one job is created, the command runs
// once, and every call gets its output and status.
func TestBlockRunsOnceUnderContention(t *testing.T) {
	h := newHarness(t)
	count := filepath.Join(h.dir, "count")
	argv := []string{"sh", "-c", "echo ran >> " + count + "; sleep 0.3; echo out; exit 3"}
	const n = 8
	type result struct {
		sj  *engine.ScriptJob
		out engine.BlockOutcome
		buf string
		err error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		e := h.newEngine()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The test process plays the script that calls drover step.
			sj, err := e.OpenScriptJob(h.ctx, "", os.Getpid())
			if err != nil {
				results[i].err = err
				return
			}
			var stdout bytes.Buffer
			out, err := e.RunBlock(h.ctx, sj, engine.Block{Name: "b", Argv: argv, Stdout: &stdout, Stderr: &bytes.Buffer{}})
			results[i] = result{sj: sj, out: out, buf: stdout.String(), err: err}
		}()
	}
	wg.Wait()
	created, replayed := 0, 0
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("call %d: %v", i, r.err)
		}
		if r.sj.Job.ID != results[0].sj.Job.ID {
			t.Errorf("call %d got job %s, call 0 job %s", i, r.sj.Job.ID, results[0].sj.Job.ID)
		}
		if r.sj.Created {
			created++
		}
		if r.out.Replayed {
			replayed++
		}
		if r.out.Code != 3 || r.buf != "out\n" {
			t.Errorf("call %d: status %d, stdout %q; want 3, %q", i, r.out.Code, r.buf, "out\n")
		}
	}
	if created != 1 || replayed != n-1 {
		t.Errorf("%d calls created the job, %d replayed; want 1 and %d", created, replayed, n-1)
	}
	if c := h.count("count", "ran"); c != 1 {
		t.Errorf("the command ran %d times, want once", c)
	}
	st := h.journal(results[0].sj.Job.ID)["b"]
	if st.Status != job.StepFailed || st.Activity != engine.ActivityBlock {
		t.Errorf("block b journaled as %s %s, want %s failed", st.Activity, st.Status, engine.ActivityBlock)
	}
}

// A script job is not a workflow: an engine that takes one up (a server
// found it queued) gives it back suspended instead of running anything.
func TestExecuteGivesBackScriptJobs(t *testing.T) {
	h := newHarness(t)
	sj, err := h.eng.OpenScriptJob(h.ctx, "", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	st := job.Queued
	if err := h.st.Apply(h.ctx, &job.Update{JobID: sj.Job.ID, Owner: sj.Job.Owner, State: &st, Release: true}); err != nil {
		t.Fatal(err)
	}
	e := h.newEngine()
	j, err := e.Claim(h.ctx, sj.Job.ID, []job.State{job.Queued})
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.Execute(h.ctx, j, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantState(t, out.Job, job.Suspended)
	if out.Job.Owner != "" {
		t.Errorf("the job is still held by %s", out.Job.Owner)
	}
}
