package clustertest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// steps is a workflow of n marked steps, each followed by a now() step;
// pause makes each marked step take that long (a sleep in its command).
const steps = lib + `
def main(dir, n=3, pause=""):
    out = []
    for i in range(n):
        out.append(mk(dir, pause))
        now()
    return out
`

// checkOnce checks every job's side effects against its journal: each
// journaled sh step wrote exactly one line, the one its result holds,
// except that a step may have run earlier on a server in dead (killed while
// the step was in flight, before it was committed); a committed step never
// ran again.
func (c *cluster) checkOnce(s *server, ids []string, dead string) (ranBy map[string]int) {
	c.t.Helper()
	eff := c.effects()
	ranBy = map[string]int{}
	for _, id := range ids {
		d := c.detail(s, id)
		if d.Job.State != "completed" {
			c.t.Errorf("job %s is %s: %s", id, d.Job.State, d.Job.Error)
			continue
		}
		byStep := map[string][]effect{}
		for _, e := range eff[id] {
			byStep[e.step] = append(byStep[e.step], e)
		}
		nsh := 0
		for _, st := range d.Steps {
			if st.Activity != "sh" {
				continue
			}
			nsh++
			var r struct {
				Stdout string `json:"stdout"`
			}
			if err := json.Unmarshal(st.Result, &r); err != nil {
				c.t.Fatalf("job %s step %s: result %s: %v", id, st.Key, st.Result, err)
			}
			lines := byStep[st.Key]
			if len(lines) == 0 {
				c.t.Errorf("job %s step %s: journaled but no side effect", id, st.Key)
				continue
			}
			last := lines[len(lines)-1]
			if strings.TrimSpace(r.Stdout) != last.String() {
				c.t.Errorf("job %s step %s: the journal holds %q but the last run wrote %q: a committed step ran again", id, st.Key, strings.TrimSpace(r.Stdout), last)
			}
			for _, e := range lines[:len(lines)-1] {
				if dead == "" || e.server != dead {
					c.t.Errorf("job %s step %s ran twice: %v", id, st.Key, lines)
					break
				}
			}
			ranBy[last.server]++
			// The journal names the engine that ran the step: the lease
			// owner id host:pid:start:random of the server's process.
			if f := strings.Split(st.Engine, ":"); len(f) < 2 || f[1] != fmt.Sprint(c.pid(last.server)) {
				c.t.Errorf("job %s step %s: engine %q, but server %s (pid %d) ran it", id, st.Key, st.Engine, last.server, c.pid(last.server))
			}
		}
		if nsh != len(byStep) {
			c.t.Errorf("job %s: %d sh steps journaled, %d steps with side effects", id, nsh, len(byStep))
		}
	}
	return ranBy
}

// TestShareWork: jobs submitted to any of three servers are run by
// whichever has capacity, each server holds its --max-running, and no step
// runs twice.
func TestShareWork(t *testing.T) {
	c := newCluster(t)
	const maxRunning = 3
	c.start(3, "--max-running", fmt.Sprint(maxRunning))
	// The marked steps also log their start and end per server, so that
	// the jobs' concurrency per server shows.
	wf := strings.Replace(steps, `cmd += "sleep " + pause + "; "`,
		`cmd += "echo + $CLUSTER_SERVER >> $D/../conc; sleep " + pause + "; echo - $CLUSTER_SERVER >> $D/../conc; "`, 1)
	var ids []string
	for i := 0; i < 45; i++ {
		ids = append(ids, c.submit(c.servers[i%3], wf, "n=2", "pause=0.2"))
	}
	c.waitAll(c.servers[0], len(ids), 90*time.Second)
	ranBy := c.checkOnce(c.servers[1], ids, "")
	t.Logf("steps run per server: %v", ranBy)
	for _, s := range c.servers {
		if ranBy[s.name] == 0 {
			t.Errorf("server %s ran nothing: %v", s.name, ranBy)
		}
	}
	data, err := os.ReadFile(filepath.Join(c.dir, "conc"))
	if err != nil {
		t.Fatal(err)
	}
	cur, peak := map[string]int{}, map[string]int{}
	total, peakTotal := 0, 0
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if f[0] == "+" {
			cur[f[1]]++
			total++
		} else {
			cur[f[1]]--
			total--
		}
		peak[f[1]] = max(peak[f[1]], cur[f[1]])
		peakTotal = max(peakTotal, total)
	}
	t.Logf("steps at once: per server at most %v, in all at most %d", peak, peakTotal)
	for name, p := range peak {
		if p > maxRunning {
			t.Errorf("server %s ran %d jobs at once, --max-running %d", name, p, maxRunning)
		}
	}
	if peakTotal <= maxRunning {
		t.Errorf("never more than %d steps at once in the cluster: the servers did not share the work", peakTotal)
	}
}

// TestFailover: kill -9 one of three servers while it runs its share of
// 300 jobs; the other two resume every one of them from its last persisted
// point within the lease and a few seconds; all complete, none is lost and
// no committed step runs again.
func TestFailover(t *testing.T) {
	c := newCluster(t)
	c.start(3, "--max-running", "150")
	const jobs = 300
	ids := c.submitMany(jobs, steps, "n=4", "pause=0.7")
	victim := c.servers[0]
	// Kill it once it has committed some steps and holds jobs mid-flight.
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := 0
		for _, lines := range c.effects() {
			for _, e := range lines {
				if e.server == victim.name {
					n++
				}
			}
		}
		if n >= 40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server %s ran %d steps in 30s", victim.name, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pid := victim.cmd.Process.Pid
	c.kill(victim)
	killed := time.Now()
	// The victim's unfinished jobs: those whose last step it ran, not all
	// four marked steps done, and those the store still shows it holding.
	rest := c.servers[1:]
	held := map[string]bool{}
	for id, lines := range c.effects() {
		if lines[len(lines)-1].server == victim.name && len(lines) < 4 {
			held[id] = true
		}
	}
	for _, j := range c.list(rest[0]) {
		if f := strings.Split(j.Owner, ":"); len(f) > 1 && f[1] == fmt.Sprint(pid) && j.State != "completed" {
			held[j.ID] = true
		}
	}
	orphans := sortedKeys(held)
	if len(orphans) == 0 {
		t.Fatalf("server %s held no unfinished job when killed", victim.name)
	}
	// Every orphan runs a step elsewhere (or completes) within the lease
	// and a few seconds.
	limit := 3*time.Second + 9*time.Second
	var taken time.Duration
	for {
		eff := c.effects()
		left := 0
		for _, id := range orphans {
			lines := eff[id]
			if (len(lines) == 0 || lines[len(lines)-1].server == victim.name) && c.detail(rest[0], id).Job.State != "completed" {
				left++
			}
		}
		if left == 0 {
			taken = time.Since(killed)
			break
		}
		if time.Since(killed) > limit {
			t.Fatalf("%d of the %d jobs of the killed server not taken up %s after its death", left, len(orphans), limit)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("killed %s holding %d unfinished jobs; all running elsewhere %s later", victim.name, len(orphans), taken.Round(10*time.Millisecond))
	c.waitAll(rest[0], jobs, 60*time.Second)
	ranBy := c.checkOnce(rest[1], ids, victim.name)
	// drover show names both servers of a job that changed hands.
	eff := c.effects()
	shown := false
	for _, id := range orphans {
		// The servers that ran the committed steps: the last run of each.
		last := map[string]string{}
		for _, e := range eff[id] {
			last[e.step] = e.server
		}
		by := map[string]bool{}
		for _, server := range last {
			by[server] = true
		}
		if !by[victim.name] || len(by) < 2 {
			continue
		}
		out, err := c.drover("show", id)
		if err != nil {
			t.Fatalf("drover show %s: %v\n%s", id, err, out)
		}
		for name := range by {
			if !strings.Contains(out, fmt.Sprintf(":%d ", c.pid(name))) {
				t.Errorf("drover show %s does not name server %s (pid %d):\n%s", id, name, c.pid(name), out)
			}
		}
		if !shown {
			t.Logf("drover show %s:\n%s", id, out)
			shown = true
		}
	}
	t.Logf("committed steps per server: %v", ranBy)
	reran := 0
	for _, lines := range c.effects() {
		seen := map[string]bool{}
		for _, e := range lines {
			if seen[e.step] {
				reran++
			}
			seen[e.step] = true
		}
	}
	t.Logf("steps in flight at the kill that ran again: %d", reran)
}

// TestTimerAndSignalOnce: a durable timer and a signal wake each waiting
// job on exactly one of three servers.
func TestTimerAndSignalOnce(t *testing.T) {
	c := newCluster(t)
	c.start(3)
	wf := lib + `
def main(dir):
    mk(dir)
    sleep("4s")
    mk(dir)
    v = wait("go")
    mk(dir)
    return v["n"]
`
	const jobs = 30
	var ids []string
	for i := 0; i < jobs; i++ {
		ids = append(ids, c.submit(c.servers[i%3], wf))
	}
	// Each job passes its timer and waits for the signal.
	deadline := time.Now().Add(60 * time.Second)
	for _, id := range ids {
		for {
			if d := c.detail(c.servers[0], id); len(c.effects()[id]) == 2 && d.Job.State == "waiting" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s did not pass its timer and wait: %+v, effects %v", id, c.detail(c.servers[0], id).Job, c.effects()[id])
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i, id := range ids {
		body := map[string]any{"name": "go", "payload": map[string]any{"n": i}}
		if err := c.call(c.servers[(i+1)%3], "POST", "/api/v1/jobs/"+id+"/signals", body, nil); err != nil {
			t.Fatal(err)
		}
	}
	c.waitAll(c.servers[2], jobs, 60*time.Second)
	ranBy := c.checkOnce(c.servers[0], ids, "")
	t.Logf("steps per server: %v", ranBy)
	for id, lines := range c.effects() {
		if len(lines) != 3 {
			t.Errorf("job %s: %d steps ran, want 3: %v", id, len(lines), lines)
		}
	}
}
