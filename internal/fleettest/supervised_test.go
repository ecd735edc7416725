package fleettest

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
)

// markerStar is issue 3's supervised command: it sleeps for the host's
// "d" var, then appends to a marker. The start file tells how many times
// the command was launched, the marker how many times it completed.
const markerStar = `
def main():
    sh("echo start >> @R@/" + target + ".start; sleep " + str(vars["d"]) + "; echo done >> @R@/" + target + ".marker")
    emit(target + " done")
`

// TestKillControllerMidCommand: drover is killed with SIGKILL while
// remote commands run; drover resume --all re-attaches to the one still
// running and collects the result of the one that finished meanwhile:
// every marker gets one line, not two.
func TestKillControllerMidCommand(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3)
	long := uniqueSleep(5)
	t.Cleanup(func() { f.killRemote("sleep " + long) })
	inv := f.write("hosts.ini", "[all]\n"+
		f.invLine("fast", f.host(0), "d=0.1")+
		f.invLine("mid", f.host(1), "d=1.5")+
		f.invLine("long", f.host(2), "d="+long))
	wf := f.write("marker.star", markerStar)

	p := f.start("run", wf, "--inventory", inv)
	f.eventually(20*time.Second, "the commands to start and fast to finish", func() bool {
		return f.remoteExists("mid.start") && f.remoteExists("long.start") && f.remoteExists("fast.marker")
	})
	if !p.Kill() {
		t.Fatalf("drover ended before the kill: %s", p)
	}
	killed := time.Now()
	// The commands outlive their controller.
	if ps := f.remoteProcs("sleep " + long); len(ps) != 1 {
		t.Fatalf("the long command does not run on its host after the controller died: %q", ps)
	}
	f.eventually(10*time.Second, "mid's command to finish without its controller", func() bool { return f.remoteExists("mid.marker") })
	if f.remoteExists("long.marker") {
		t.Fatal("the long command ended before the resume: this machine is too slow for this test's timing")
	}
	parent := f.parent()
	if st := f.show(parent.ID).Job.State; st != job.Interrupted && st != job.Running {
		t.Errorf("parent after the kill: %s, want interrupted", st)
	}

	r := f.must(0, 60*time.Second, "resume", "--all")
	took := time.Since(killed)
	for _, h := range []string{"fast", "mid", "long"} {
		if got := f.remoteLines(h + ".start"); len(got) != 1 {
			t.Errorf("%s's command was launched %d times, want once", h, len(got))
		}
		if got := f.remoteLines(h + ".marker"); len(got) != 1 {
			t.Errorf("%s's marker has %d lines, want 1", h, len(got))
		}
	}
	v := f.show(parent.ID)
	if v.Job.State != job.Completed || v.Children[job.Completed] != 3 {
		t.Fatalf("after resume: %s %v\n%s", v.Job.State, v.Children, r)
	}
	t.Logf("resume ended %s after the kill (the long command slept %ss)", took.Round(time.Millisecond), long)
	for host, c := range f.children(parent.ID) {
		if out := f.output(c.ID); len(out) != 1 || out[0] != host+" done" {
			t.Errorf("output of %s: %q", c.ID, out)
		}
	}
}

// TestDroppedConnectionReattaches: killing the sshd processes of a
// connection mid-command (a network failure) does not fail the step nor
// run the command twice: the manager re-dials and re-attaches.
func TestDroppedConnectionReattaches(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 2)
	inv := f.write("hosts.ini", "[all]\n"+f.invLine("a", f.host(0), "d=2")+f.invLine("b", f.host(1), "d=0.1"))
	wf := f.write("marker.star", markerStar)
	p := f.start("run", wf, "--inventory", inv)
	f.eventually(20*time.Second, "a's command to start", func() bool { return f.remoteExists("a.start") })
	if n := f.s.DropConnections(f.host(0)); n == 0 {
		t.Fatal("no connection to drop")
	}
	if code := p.Wait(t, 60*time.Second); code != 0 {
		t.Fatalf("a dropped connection failed the run: %s", p)
	}
	for _, h := range []string{"a", "b"} {
		if s, m := f.remoteLines(h+".start"), f.remoteLines(h+".marker"); len(s) != 1 || len(m) != 1 {
			t.Errorf("%s: launched %d times, completed %d times; want once each", h, len(s), len(m))
		}
	}
}

// stopStar sleeps on every host for as long as the file dur says.
const stopStar = `
def main(tag = ""):
    sh("echo " + tag + " >> @R@/" + target + ".tags; sleep $(cat @R@/dur)")
    sh("echo done >> @R@/" + target + ".marker")
`

// TestStopLeavesNothingRunning: drover stop PARENT stops every child,
// kills the remote commands' process groups (the target's process table
// is clean) and the parent ends stopped; drover resume PARENT runs the
// stopped children again with the same input.
func TestStopLeavesNothingRunning(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3)
	long := uniqueSleep(300)
	t.Cleanup(func() { f.killRemote("sleep " + long) })
	writeRemote(t, f, "dur", long+"\n")
	inv := f.write("hosts.ini", "[all]\n"+f.invLine("a", f.host(0), "")+f.invLine("b", f.host(1), "")+f.invLine("c", f.host(2), ""))
	wf := f.write("stop.star", stopStar)

	p := f.start("run", wf, "--inventory", inv, "-p", "tag=t42", "--throttle", "2")
	f.eventually(20*time.Second, "two commands to run on their hosts", func() bool { return len(f.remoteProcs("sleep "+long)) == 2 })
	parent := f.parent()
	s := f.must(0, 60*time.Second, "stop", parent.ID)
	if code := p.Wait(t, 30*time.Second); code != 1 {
		t.Errorf("drover run of a stopped job: want exit 1: %s", p)
	}
	f.eventually(10*time.Second, "the stopped commands to leave the hosts' process table", func() bool { return len(f.remoteProcs("sleep "+long)) == 0 })
	// Nor anything else of the job: launchers, wrappers.
	f.eventually(10*time.Second, "every process of the job to leave the hosts", func() bool { return len(f.remoteProcsWith(parent.ID)) == 0 })
	v := f.show(parent.ID)
	if v.Job.State != job.Stopped {
		t.Errorf("parent after stop: %s (%s)\n%s", v.Job.State, v.Job.Error, s)
	}
	// Two children were stopped mid-command; the third never started.
	if v.Children[job.Stopped] != 2 || v.Children[job.Queued] != 1 {
		t.Errorf("children after stop: %v", v.Children)
	}
	for _, h := range []string{"a", "b", "c"} {
		if f.remoteExists(h + ".marker") {
			t.Errorf("%s went on after its stopped step", h)
		}
	}

	writeRemote(t, f, "dur", "0.1\n")
	r := f.must(0, 60*time.Second, "resume", parent.ID)
	v = f.show(parent.ID)
	if v.Job.State != job.Completed || v.Children[job.Completed] != 3 {
		t.Fatalf("after resume: %s %v\n%s", v.Job.State, v.Children, r)
	}
	for _, h := range []string{"a", "b", "c"} {
		tags := f.remoteLines(h + ".tags")
		for _, tag := range tags {
			if tag != "t42" {
				t.Errorf("%s ran with tag %q after resume, want the same input t42", h, tag)
			}
		}
		if m := f.remoteLines(h + ".marker"); len(m) != 1 {
			t.Errorf("%s's marker: %d lines", h, len(m))
		}
	}
}

// writeRemote writes a file in the remote scratch directory, owned by the
// hosts' login.
func writeRemote(t *testing.T, f *fleet, name, text string) {
	t.Helper()
	p := filepath.Join(f.remote, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	f.s.Chown(p)
}
