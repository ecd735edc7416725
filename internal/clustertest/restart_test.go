package clustertest

import (
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/pgtest"
)

// TestDatabaseRestart: two servers run jobs whose steps take a while; the
// database goes away for longer than the lease while steps are in flight,
// and comes back. No server exits, each says in its log that the database
// is unavailable and that it retries, the steps in flight finish and are
// committed, every job completes, and no step runs twice: a lease that
// lapsed only because nobody could reach the database is not taken over.
func TestDatabaseRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test: real processes")
	}
	pg := pgtest.New(t, pgtest.Options{})
	t.Setenv("DROVER_TEST_POSTGRES", pg.URL())
	c := newCluster(t)
	c.start(2, "--max-running", "20")
	// A third of the jobs run three marked steps of 2 s each, each
	// followed by a now() step, and commit every step: the outage catches
	// commits. A third do the same but commit only at their end: the
	// outage catches steps that start while the database is away, which
	// renew the lease first. The last third run one step of 12 s, which
	// goes on after the database is back, when its lease has lapsed: if
	// another server took the job over it would run the step again.
	const jobs = 24
	ids := c.submitMany(jobs/3, steps, "n=3", "pause=2")
	ids = append(ids, c.submitMany(jobs/3, steps, "n=1", "pause=12")...)
	c.persist = "checkpoints"
	ids = append(ids, c.submitMany(jobs/3, steps, "n=3", "pause=2")...)
	want := map[string]int{}
	for i, id := range ids {
		want[id] = 3
		if i/(jobs/3) == 1 {
			want[id] = 1
		}
	}

	// Stop the database once steps have committed and others are in
	// flight (every job runs its first step at once: 40 slots).
	deadline := time.Now().Add(60 * time.Second)
	for {
		n := 0
		for _, lines := range c.effects() {
			n += len(lines)
		}
		if n >= jobs/3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d steps ran in 60 s", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Into the next round of steps, so that the outage catches some in
	// the middle of their sleep.
	time.Sleep(700 * time.Millisecond)
	pg.Stop()
	stopped := time.Now()
	const outage = 6 * time.Second // twice the lease
	time.Sleep(outage)
	pg.Start()
	t.Logf("database down for %s", time.Since(stopped).Round(10*time.Millisecond))

	c.waitAll(c.servers[0], jobs, 90*time.Second)
	for _, s := range c.servers {
		select {
		case <-s.done:
			t.Fatalf("server %s exited: %v\n%s", s.name, s.cmd.ProcessState, s.logs())
		default:
		}
	}
	ranBy := c.checkOnce(c.servers[1], ids, "")
	t.Logf("committed steps per server: %v", ranBy)
	for id, lines := range c.effects() {
		if len(lines) != want[id] {
			t.Errorf("job %s: %d steps ran, want %d: %v", id, len(lines), want[id], lines)
		}
	}
	for _, s := range c.servers {
		logs := s.logs()
		for _, want := range []string{"database unavailable", "database available again"} {
			if !strings.Contains(logs, want) {
				t.Errorf("server %s did not log %q:\n%s", s.name, want, logs)
			}
		}
		if strings.Contains(logs, "level=ERROR") || strings.Contains(logs, "panic") {
			t.Errorf("server %s logged errors:\n%s", s.name, logs)
		}
		if testing.Verbose() {
			t.Logf("server %s log:\n%s", s.name, logs)
		}
	}
}
