package clustertest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// fireRow is one recorded fire of a schedule.
type fireRow struct {
	at, fired time.Time // the scheduled time, and when it fired
	jobID     string
}

// scheduleState reads, straight from the database, the fires of a
// schedule, the jobs named after it and the scheduler lease's holder.
func (c *cluster) scheduleState(conn *pgx.Conn, name string) (fires []fireRow, jobs map[string]string, holder string) {
	c.t.Helper()
	ctx := context.Background()
	// One snapshot, so that a fire committed between the reads does not
	// look like a job without its fire.
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		c.t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, "SELECT at, fired, job_id FROM drover.schedule_fires WHERE schedule = $1 ORDER BY at", name)
	if err != nil {
		c.t.Fatal(err)
	}
	for rows.Next() {
		var f fireRow
		if err := rows.Scan(&f.at, &f.fired, &f.jobID); err != nil {
			c.t.Fatal(err)
		}
		fires = append(fires, f)
	}
	if err := rows.Err(); err != nil {
		c.t.Fatal(err)
	}
	jobs = map[string]string{}
	rows, err = tx.Query(ctx, "SELECT id, state FROM drover.jobs WHERE name = $1", "schedule:"+name)
	if err != nil {
		c.t.Fatal(err)
	}
	for rows.Next() {
		var id, state string
		if err := rows.Scan(&id, &state); err != nil {
			c.t.Fatal(err)
		}
		jobs[id] = state
	}
	if err := rows.Err(); err != nil {
		c.t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "SELECT holder FROM drover.leases WHERE name = 'scheduler'").Scan(&holder); err != nil && err != pgx.ErrNoRows {
		c.t.Fatal(err)
	}
	return fires, jobs, holder
}

// checkFiredOnce checks that every fire made one job, no time fired
// twice, and no job exists without its fire.
func (c *cluster) checkFiredOnce(fires []fireRow, jobs map[string]string) {
	c.t.Helper()
	seenAt, seenJob := map[time.Time]bool{}, map[string]bool{}
	for _, f := range fires {
		if seenAt[f.at] {
			c.t.Errorf("time %s fired twice", f.at)
		}
		seenAt[f.at] = true
		if f.jobID == "" || seenJob[f.jobID] {
			c.t.Errorf("fire at %s: job %q (empty or shared)", f.at, f.jobID)
		}
		seenJob[f.jobID] = true
		if _, ok := jobs[f.jobID]; !ok {
			c.t.Errorf("fire at %s: its job %s does not exist", f.at, f.jobID)
		}
	}
	if len(jobs) != len(fires) {
		c.t.Errorf("%d scheduled jobs for %d fires", len(jobs), len(fires))
	}
}

// serverOf names the server whose engine owner id is holder
// (host:pid:start:random).
func (c *cluster) serverOf(holder string) *server {
	f := strings.Split(holder, ":")
	if len(f) < 2 {
		return nil
	}
	for _, s := range c.servers {
		if fmt.Sprint(s.cmd.Process.Pid) == f[1] {
			return s
		}
	}
	return nil
}

// TestScheduleFiresOnce: three servers on one database fire a schedule of
// every second once per second between them, every fire one job; when the
// leader is killed, another server takes the lead within the lease and
// goes on firing, still once per time.
func TestScheduleFiresOnce(t *testing.T) {
	c := newCluster(t)
	wf := filepath.Join(c.dir, "tick.star")
	if err := os.WriteFile(wf, []byte("def main(who):\n    print(\"tick\", who)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.drover("workflow", "add", "tick", wf); err != nil {
		t.Fatalf("workflow add: %v\n%s", err, out)
	}
	c.start(3)
	conn, err := pgx.Connect(context.Background(), c.db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	if out, err := c.drover("schedule", "add", "tick", "--cron", "@every 1s", "tick", "-p", "who=cluster"); err != nil {
		t.Fatalf("schedule add: %v\n%s", err, out)
	}
	added := time.Now()
	time.Sleep(5 * time.Second)
	fires, jobs, holder := c.scheduleState(conn, "tick")
	elapsed := time.Since(added)
	c.checkFiredOnce(fires, jobs)
	// One fire a second: not one per server.
	if max := int(elapsed/time.Second) + 1; len(fires) < 3 || len(fires) > max {
		t.Errorf("%d fires in %s, want 3 to %d", len(fires), elapsed.Round(time.Millisecond), max)
	}
	for i := 1; i < len(fires); i++ {
		if d := fires[i].at.Sub(fires[i-1].at); d != time.Second {
			t.Errorf("fires %s and %s: %s apart, want 1s (a missed or extra time)", fires[i-1].at, fires[i].at, d)
		}
	}
	leader := c.serverOf(holder)
	if leader == nil {
		t.Fatalf("the scheduler lease is held by %q, none of the servers", holder)
	}
	t.Logf("%d fires in %s, leader %s", len(fires), elapsed.Round(time.Millisecond), leader.name)

	// kill -9 the leader: its lease (3s) runs out and another server
	// leads and fires; the times missed meanwhile fire once.
	c.kill(leader)
	killed := time.Now()
	before := len(fires)
	deadline := killed.Add(10 * time.Second)
	var newLeader *server
	for {
		fires, jobs, holder = c.scheduleState(conn, "tick")
		newLeader = c.serverOf(holder)
		if newLeader != nil && newLeader != leader && len(fires) >= before+3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s after killing leader %s: %d fires (%d before), lease held by %q", leader.name, len(fires), before, holder)
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.checkFiredOnce(fires, jobs)
	// The first fire after the kill is the time missed while nobody led,
	// fired late, once; then one a second again.
	for i, f := range fires {
		if f.fired.After(killed) {
			took := f.fired.Sub(killed)
			t.Logf("%s took the lead: first fire %s after the kill, for the time %s after it", newLeader.name,
				took.Round(time.Millisecond), f.at.Sub(killed).Round(time.Millisecond))
			if took > 5*time.Second {
				t.Errorf("the lead passed %s after the kill, want within the lease (3s) and a poll", took)
			}
			for k := i + 2; k < len(fires); k++ {
				if d := fires[k].at.Sub(fires[k-1].at); d != time.Second {
					t.Errorf("after the takeover, fires %s and %s are %s apart", fires[k-1].at, fires[k].at, d)
				}
			}
			break
		}
	}

	// Every scheduled job runs to completion, the one the dead server may
	// have held included.
	deadline = time.Now().Add(20 * time.Second)
	for {
		fires, jobs, _ = c.scheduleState(conn, "tick")
		pending := 0
		for id, st := range jobs {
			switch st {
			case "completed":
			case "failed", "stopped":
				t.Fatalf("scheduled job %s is %s", id, st)
			default:
				pending++
			}
		}
		if pending <= 1 { // the latest fire may just have been made
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d scheduled jobs still not completed: %v", pending, jobs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.checkFiredOnce(fires, jobs)
}
