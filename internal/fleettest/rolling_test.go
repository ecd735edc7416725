package fleettest

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/remote/sshtest"
)

// TestBatch: --batch N% runs fixed batches, the next starting when the
// previous one has ended.
func TestBatch(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 5)
	var inv strings.Builder
	inv.WriteString("[all]\n")
	for i := range 5 {
		inv.WriteString(f.invLine(fmt.Sprintf("h%d", i+1), f.host(i), ""))
	}
	hosts := f.write("hosts.ini", inv.String())
	// The first host of a batch is slower: a sliding window would start
	// the next host as soon as the second one ended.
	wf := f.write("batch.star", `
def main():
    d = "0.8" if target in ("h1", "h3") else "0.1"
    sh("s=$(date +%s.%N); sleep " + d + "; echo " + target + " $s $(date +%s.%N) >> @R@/intervals")
`)
	f.must(0, 60*time.Second, "run", wf, "--inventory", hosts, "--batch", "40%")
	iv := readIntervals(t, f.remoteLines("intervals"))
	if len(iv) != 5 {
		t.Fatalf("intervals: %v", iv)
	}
	at := map[string]interval{}
	for _, i := range iv {
		at[i.host] = i
	}
	batches := [][]string{{"h1", "h2"}, {"h3", "h4"}, {"h5"}}
	for b := 0; b+1 < len(batches); b++ {
		end := 0.0
		for _, h := range batches[b] {
			end = max(end, at[h].end)
		}
		for _, h := range batches[b+1] {
			if at[h].start < end {
				t.Errorf("--batch 40%% of 5: %s (batch %d) started %.3fs before batch %d ended", h, b+2, end-at[h].start, b+1)
			}
		}
	}
}

// rollStar has three steps; the second fails while the host has a
// "broken" file.
const rollStar = `
def main(tag = ""):
    sh("echo " + tag + " >> @R@/" + target + ".s1")
    sh("test ! -e @R@/" + target + ".broken")
    sh("echo " + tag + " >> @R@/" + target + ".s3")
`

// TestMaxFailAndResume: --max-fail stops starting hosts once that many
// failed, the rest end skipped; drover resume PARENT --hosts reruns only
// the named ones, drover resume PARENT the failed and skipped ones, each
// from its last persisted point and with the same input.
func TestMaxFailAndResume(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 6)
	var inv strings.Builder
	inv.WriteString("[all]\n")
	for i := range 6 {
		inv.WriteString(f.invLine(fmt.Sprintf("h%d", i+1), f.host(i), ""))
	}
	hosts := f.write("hosts.ini", inv.String())
	wf := f.write("roll.star", rollStar)
	writeRemote(t, f, "h1.broken", "")
	writeRemote(t, f, "h3.broken", "")

	p := f.must(1, 60*time.Second, "run", wf, "--inventory", hosts, "--throttle", "1", "--max-fail", "2", "-p", "tag=v9")
	parent := f.parent()
	v := f.show(parent.ID)
	if v.Children[job.Completed] != 1 || v.Children[job.Failed] != 2 || v.Children[job.Skipped] != 3 {
		t.Fatalf("children: %v\n%s", v.Children, p)
	}
	states := map[string]job.State{}
	for h, c := range f.children(parent.ID) {
		states[h] = c.State
	}
	want := map[string]job.State{"h1": job.Failed, "h2": job.Completed, "h3": job.Failed, "h4": job.Skipped, "h5": job.Skipped, "h6": job.Skipped}
	for h, s := range want {
		if states[h] != s {
			t.Errorf("%s is %s, want %s", h, states[h], s)
		}
	}
	if !strings.Contains(v.Job.Error, "2 of 6 hosts failed: h1, h3") || !strings.Contains(v.Job.Error, "3 skipped") {
		t.Errorf("parent's error: %s", v.Job.Error)
	}
	for _, h := range []string{"h4", "h5", "h6"} {
		if f.remoteExists(h + ".s1") {
			t.Errorf("skipped %s ran", h)
		}
	}

	// Unknown host for --hosts: a usage error, nothing runs.
	if r, code := f.drover(30*time.Second, "resume", parent.ID, "--hosts", "nosuch"); code != 2 || !strings.Contains(r.Stderr.String(), "nosuch") {
		t.Errorf("resume --hosts nosuch: %s", r)
	}

	// h1 is fixed: rerun it alone.
	removeRemote(t, f, "h1.broken")
	f.must(1, 60*time.Second, "resume", parent.ID, "--hosts", "h1")
	for h, c := range f.children(parent.ID) {
		states[h] = c.State
	}
	want["h1"] = job.Completed
	for h, s := range want {
		if states[h] != s {
			t.Errorf("after resume --hosts h1: %s is %s, want %s", h, states[h], s)
		}
	}

	// Everything fixed: the rest runs, the completed hosts do not.
	removeRemote(t, f, "h3.broken")
	f.must(0, 60*time.Second, "resume", parent.ID)
	v = f.show(parent.ID)
	if v.Job.State != job.Completed || v.Children[job.Completed] != 6 {
		t.Fatalf("after resume: %s %v", v.Job.State, v.Children)
	}
	for i := 1; i <= 6; i++ {
		h := fmt.Sprintf("h%d", i)
		// Step 1 of the failed hosts was committed before step 2 failed:
		// resuming from the last persisted point does not run it again.
		for _, step := range []string{"s1", "s3"} {
			got := f.remoteLines(h + "." + step)
			if len(got) != 1 || got[0] != "v9" {
				t.Errorf("%s step %s ran with tags %q, want once with v9", h, step, got)
			}
		}
	}
	// The resumed children are the same jobs, run again.
	var ids []string
	for _, c := range f.children(parent.ID) {
		ids = append(ids, c.ID)
	}
	sort.Strings(ids)
	if len(ids) != 6 || ids[0] != parent.ID+".1" || ids[5] != parent.ID+".6" {
		t.Errorf("child ids: %v", ids)
	}
}

func removeRemote(t *testing.T, f *fleet, name string) {
	t.Helper()
	if err := removeFile(f.remote, name); err != nil {
		t.Fatal(err)
	}
}

// TestOnErrorSuspendRerunsFailedStep: with --on-error suspend a failed
// remote step suspends its child job; once the operator fixed the host,
// drover resume runs the failed step again (workflows.md: "the failed
// step runs again, everything before it is replayed").
func TestOnErrorSuspendRerunsFailedStep(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 2)
	hosts := f.write("hosts.ini", "[all]\n"+f.invLine("h1", f.host(0), "")+f.invLine("h2", f.host(1), ""))
	wf := f.write("roll.star", rollStar)
	writeRemote(t, f, "h1.broken", "")

	p := f.must(3, 60*time.Second, "run", wf, "--inventory", hosts, "--on-error", "suspend", "-p", "tag=s1")
	parent := f.parent()
	v := f.show(parent.ID)
	if v.Job.State != job.Suspended || v.Children[job.Suspended] != 1 || v.Children[job.Completed] != 1 {
		t.Fatalf("after the failure: %s %v\n%s", v.Job.State, v.Children, p)
	}
	// What the failed step left on its host: its supervised command's
	// directory with the exit code, which a later Exec of the same job and
	// step takes for the result of a command started before a crash.
	h1 := f.children(parent.ID)["h1"]
	rc, rcErr := os.ReadFile(filepath.Join(f.s.Home, ".drover", "run", h1.ID, "2", "rc"))
	removeRemote(t, f, "h1.broken")
	r, code := f.drover(60*time.Second, "resume", parent.ID)
	v = f.show(parent.ID)
	if code != 0 || v.Job.State != job.Completed {
		c := f.children(parent.ID)["h1"]
		t.Errorf("bug: the host was fixed, but resuming the suspended job did not run its failed step again: exit %d, parent %s, h1 %s: %s\n"+
			"(before the resume, the host held ~/.drover/run/%s/2/rc = %q, %v: the resumed Exec collected that stale result)\n%s",
			code, v.Job.State, c.State, c.Reason, h1.ID, strings.TrimSpace(string(rc)), rcErr, r)
	}
	if got := f.remoteLines("h1.s1"); len(got) != 1 {
		t.Errorf("h1 step 1 ran %d times, want once", len(got))
	}
}

// switchProxy forwards a local port to a host and can be taken down and
// brought back up on the same port, as a host that reboots.
type switchProxy struct {
	t      *testing.T
	addr   string // 127.0.0.1:port
	target string
	mu     sync.Mutex
	l      net.Listener
	conns  []net.Conn
}

func newSwitchProxy(t *testing.T, target string) *switchProxy {
	p := &switchProxy{t: t, target: target}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = l.Addr().String()
	p.serve(l)
	t.Cleanup(p.down)
	return p
}

func (p *switchProxy) serve(l net.Listener) {
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
}

// down closes the listener and every connection: connecting is refused.
func (p *switchProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *switchProxy) up() {
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.serve(l)
}

// TestResumeFailedChildAfterHostWasDown: a child job fails on its host,
// and the host is unreachable when the job ends, so drover cannot clean
// the step directory there. Once the host is back and fixed, drover
// resume PARENT must run the failed step again, not hand back the old
// failure it finds recorded on the host.
func TestResumeFailedChildAfterHostWasDown(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 1)
	h := f.host(0)
	p := newSwitchProxy(t, h.HostPort())
	host, port, _ := net.SplitHostPort(p.addr)
	appendFile(t, f.knownHosts(), knownhostsLine(p.addr, h))
	inv := f.write("hosts.ini", fmt.Sprintf("[all]\nflaky ansible_host=%s ansible_port=%s ansible_user=%s\n", host, port, f.s.User))
	gate := filepath.Join(f.dir, "host-is-down")
	wf := f.write("flaky.star", strings.ReplaceAll(`
def remote():
    sh("echo run >> @R@/runs; test ! -e @R@/broken")

def local():
    sh("while [ ! -e @GATE@ ]; do sleep 0.05; done", on = "local")

def main():
    parallel(remote, local, fail_fast = False)
`, "@GATE@", gate))
	writeRemote(t, f, "broken", "")

	run := f.start("run", wf, "--inventory", inv)
	f.eventually(30*time.Second, "the remote step to fail", func() bool { return len(f.remoteLines("runs")) == 1 })
	time.Sleep(time.Second) // its result travels back
	p.down()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := run.Wait(t, 60*time.Second); code != 1 {
		t.Fatalf("want the run to fail: %s", run)
	}
	parent := f.parent()
	child := f.children(parent.ID)["flaky"]
	left, _ := filepath.Glob(filepath.Join(f.s.Home, ".drover", "run", child.ID, "*", "rc"))

	p.up()
	removeRemote(t, f, "broken")
	r, code := f.drover(60*time.Second, "resume", parent.ID)
	runs := f.remoteLines("runs")
	if code != 0 || len(runs) != 2 {
		c := f.children(parent.ID)["flaky"]
		t.Errorf("bug: the host is back and fixed, but resuming the failed job did not run the failed step again "+
			"(the command ran %d times; exit %d; child %s: %s)\nthe failed job's step directories left on the host: %q\n%s",
			len(runs), code, c.State, c.Error, left, r)
	}
}

// knownhostsLine is a known_hosts line giving the address addr h's key.
func knownhostsLine(addr string, h sshtest.Host) string {
	return knownhosts.Line([]string{knownhosts.Normalize(addr)}, h.HostKey) + "\n"
}
