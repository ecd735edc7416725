package engine_test

import (
	"testing"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// What the store holds while a job runs, by persistence policy (SPEC 2.1):
// always: every step as soon as it returns; checkpoints: at checkpoint(),
// wait, sleep and the end; never: only at the end.
func TestPersistPolicies(t *testing.T) {
	wf := `
def main():
    sh("echo one")
    sh("echo two")
    ` + gate("g1") + `
    checkpoint()
    ` + gate("g2") + `
    sh("echo five")
    sleep("10ms")
    ` + gate("g3") + `
    sh("echo eight")
`
	for _, tc := range []struct {
		persist    job.Persist
		g1, g2, g3 []string // done keys the store holds at each gate
	}{
		{job.PersistAlways, []string{"1", "2"}, []string{"1", "2", "3"}, []string{"1", "2", "3", "4", "5", "6"}},
		{job.PersistCheckpoints, nil, []string{"1", "2", "3"}, []string{"1", "2", "3", "4", "5", "6"}},
		{job.PersistNever, nil, nil, nil},
	} {
		t.Run(string(tc.persist), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			j := h.start(wf, engine.Spec{Persist: tc.persist})
			if got := h.job(j.ID).Persist; got != tc.persist {
				t.Fatalf("job persist = %s", got)
			}
			done := h.execAsync(h.eng, j)
			for _, g := range []struct {
				name string
				want []string
			}{{"g1", tc.g1}, {"g2", tc.g2}, {"g3", tc.g3}} {
				h.await(g.name)
				if got := h.doneKeys(j.ID); !equalStrings(got, g.want) {
					t.Errorf("at %s the store holds steps %v, want %v", g.name, got, g.want)
				}
				if js := h.job(j.ID); js.State != job.Running || js.Steps != len(g.want) {
					t.Errorf("at %s the stored job is %s with %d steps, want running with %d", g.name, js.State, js.Steps, len(g.want))
				}
				h.open(g.name)
			}
			j = <-done
			wantState(t, j, job.Completed)
			all := []string{"1", "2", "3", "4", "5", "6", "7", "8"}
			if got := h.doneKeys(j.ID); !equalStrings(got, all) {
				t.Errorf("at the end the store holds %v, want %v", got, all)
			}
			if j.Steps != 8 {
				t.Errorf("job.Steps = %d", j.Steps)
			}
		})
	}
}

// Output and logs reach the store while the job runs whatever the policy,
// so followers see them; the journal does not.
func TestRecordsFlushedLiveUnderNever(t *testing.T) {
	h := newHarness(t)
	j := h.start(`
def main():
    sh("echo one")
    emit("hello")
    print("a log line")
    progress(1, 3, "a third")
    `+gate("g")+`
`, engine.Spec{Persist: job.PersistNever})
	done := h.execAsync(h.eng, j)
	h.await("g")
	eventually(t, 5e9, "output stored", func() bool { return len(h.output(j.ID)) == 1 })
	eventually(t, 5e9, "log stored", func() bool {
		for _, l := range h.logs(j.ID) {
			if l == "a log line" {
				return true
			}
		}
		return false
	})
	eventually(t, 5e9, "progress stored", func() bool { p := h.job(j.ID).Progress; return p.Done == 1 && p.Total == 3 })
	if got := h.doneKeys(j.ID); len(got) != 0 {
		t.Errorf("persist never: the journal holds %v while the job runs", got)
	}
	h.open("g")
	wantState(t, <-done, job.Completed)
}
