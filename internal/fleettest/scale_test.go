package fleettest

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/store/sqlite"
)

// bigStar has three steps per host, each appending its number to the
// host's file: the file tells how many times each step ran.
const bigStar = `
def main():
    sh("echo 1 >> @R@/" + target)
    sh("sleep 0.2; echo 2 >> @R@/" + target)
    sh("echo 3 >> @R@/" + target)
`

// TestKillDuring200HostRun: drover is killed with SIGKILL in the middle
// of a 200-host run at throttle 50; drover resume --all finishes every
// host, and no step ran twice: committed steps are replayed from the
// journal, and steps in flight re-attach to their supervised commands.
func TestKillDuring200HostRun(t *testing.T) {
	if testing.Short() {
		t.Skip("200 sshd hosts")
	}
	t.Parallel()
	const n = 200
	f := newFleet(t, n)
	inv := f.s.WriteInventory("hosts.ini")
	wf := f.write("big.star", bigStar)

	counts := func() (started, finished int) {
		for _, h := range f.s.Hosts {
			l := f.remoteLines(h.Name)
			if len(l) > 0 {
				started++
			}
			if len(l) == 3 {
				finished++
			}
		}
		return
	}
	start := time.Now()
	p := f.start("run", wf, "--inventory", inv, "--throttle", "50")
	f.eventually(60*time.Second, "a third of the hosts to finish", func() bool { _, fin := counts(); return fin >= n/3 })
	if !p.Kill() {
		t.Fatalf("drover ended before the kill: %s", p)
	}
	startedAtKill, finishedAtKill := counts()
	t.Logf("killed after %s: %d hosts started, %d finished", time.Since(start).Round(time.Millisecond), startedAtKill, finishedAtKill)

	// What the journal holds committed at the kill, and how many times
	// each host's steps had run then.
	parent := f.parent()
	committed := map[string][]string{} // host -> done step keys
	childStates := map[job.State]int{}
	stateAtKill := map[string]job.State{} // child id -> state
	f.withStore(func(st *sqlite.Store) {
		list, err := st.Jobs(f.ctx, job.Filter{ParentID: parent.ID}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range list {
			childStates[c.State]++
			stateAtKill[c.ID] = c.State
			steps, err := st.Journal(f.ctx, c.ID)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range steps {
				if s.Status == job.StepDone {
					committed[c.Target] = append(committed[c.Target], s.Key)
				}
			}
		}
	})
	t.Logf("children at the kill: %v", childStates)
	if childStates[job.Completed] == 0 || childStates[job.Completed] == n {
		t.Fatalf("the kill did not land mid-run: %v", childStates)
	}

	resumed := time.Now()
	r := f.must(0, 120*time.Second, "resume", "--all")
	t.Logf("resume took %s", time.Since(resumed).Round(time.Millisecond))
	v := f.show(parent.ID)
	if v.Job.State != job.Completed || v.Children[job.Completed] != n {
		t.Fatalf("after resume: %s %v\n%s", v.Job.State, v.Children, r)
	}
	twice := 0
	for _, h := range f.s.Hosts {
		got := strings.Join(f.remoteLines(h.Name), ",")
		if got == "1,2,3" {
			continue
		}
		twice++
		if twice <= 10 {
			t.Errorf("host %s ran its steps as %q (committed at the kill: %v), want 1,2,3 each once", h.Name, got, committed[h.Name])
		}
	}
	if twice > 0 {
		t.Errorf("%d hosts ran a step twice", twice)
	}
	// Every child ended, so drover cleaned the step directories its
	// supervised commands left on the hosts.
	leftovers, _ := filepath.Glob(filepath.Join(f.s.Home, ".drover", "run", parent.ID+".*"))
	if len(leftovers) > 0 {
		why := map[job.State]int{}
		for _, l := range leftovers {
			why[stateAtKill[filepath.Base(l)]]++
		}
		t.Errorf("bug: %d jobs' step directories left on the hosts after every child ended (state of those children at the kill: %v), e.g. %s",
			len(leftovers), why, leftovers[0])
	}
}
