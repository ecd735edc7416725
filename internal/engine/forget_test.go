package engine_test

import (
	"context"
	"sync"
	"testing"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// forgetSpy is a remote executor that leaves state on hosts: it records,
// when the engine asks it to clean a job's hosts, what the store then
// held for the job.
type forgetSpy struct {
	h *harness

	mu      sync.Mutex
	forgets []forgetSeen
}

type forgetSeen struct {
	host  string
	state job.State
	steps int
}

func (s *forgetSpy) Exec(_ context.Context, c *engine.Command) (*engine.CommandResult, error) {
	return &engine.CommandResult{Stdout: c.Host.Name + "\n"}, nil
}

func (s *forgetSpy) Forget(ctx context.Context, h engine.Host, jobID string) error {
	j, err := s.h.st.Job(ctx, jobID)
	if err != nil {
		return err
	}
	steps, err := s.h.st.Journal(ctx, jobID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forgets = append(s.forgets, forgetSeen{h.Name, j.State, len(steps)})
	return nil
}

// TestForgetBeforeEndCommit: the hosts' step directories are cleaned
// after every step result is committed and before the job's end is. A
// controller that dies after the end commit would otherwise leave them
// for good, since nothing resumes an ended job.
func TestForgetBeforeEndCommit(t *testing.T) {
	t.Parallel()
	spy := &forgetSpy{}
	h := newHarness(t, func(o *engine.Options) { o.Remote = spy })
	spy.h = h
	// The default policy writes the journal only at the end: the clean-up
	// must come after that write, not before it.
	j := h.run(`
def main():
    sh("true", on="web1")
    sh("true", on="web2")
    sh("true", on="web1")
`, engine.Spec{})
	if j.State != job.Completed {
		t.Fatalf("job: %s %s", j.State, j.Error)
	}
	spy.mu.Lock()
	defer spy.mu.Unlock()
	if len(spy.forgets) != 2 {
		t.Fatalf("Forget calls: %+v, want one per host (web1, web2)", spy.forgets)
	}
	for _, f := range spy.forgets {
		if f.state.Ended() {
			t.Errorf("Forget(%s) ran after the job's end was committed (%s): a crash in between leaks the directories", f.host, f.state)
		}
		if f.steps != 3 {
			t.Errorf("Forget(%s) ran with %d of 3 step results committed: a crash then re-runs commands whose state it removed", f.host, f.steps)
		}
	}
}
