package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover/drover/internal/job"
)

// storeConn is a connection of its own to the store's database and schema.
func storeConn(t *testing.T, s *Store) *pgx.Conn {
	t.Helper()
	conn, err := pgx.ConnectConfig(context.Background(), s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// holdWriter makes the store's one writer wait: it locks job id in a
// transaction of its own and has the writer run an Apply to it, which
// waits for the lock. Requests made meanwhile queue up, and once the
// returned function releases the lock they go together into the next
// batch: one transaction, sent in one pipeline with its COMMIT.
func holdWriter(t *testing.T, s *Store, id, owner string) (release func()) {
	t.Helper()
	ctx := context.Background()
	conn := storeConn(t, s)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", id); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Apply(ctx, &job.Update{JobID: id, Owner: owner, Progress: &job.Progress{Done: 1}}) }()
	check := storeConn(t, s)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := check.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer never waited for the lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return func() {
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("apply to %s: %v", id, err)
		}
	}
}

// queued waits until n requests wait for the writer.
func queued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.reqs) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", len(s.reqs), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBatchRefusals runs refused requests in one batch with accepted ones:
// the batch's transaction is sent with its COMMIT before any answer is
// read, so a refused request must write nothing by its SQL alone, and
// must not keep the others from committing; a refused request that would
// have made a job due wakes nobody.
func TestBatchRefusals(t *testing.T) {
	s, _ := openFresh(t, Options{Writers: 1})
	ctx := context.Background()
	now := time.Now()
	hour := now.Add(time.Hour)
	held := func(id, owner string) *job.Job { return &job.Job{ID: id, Owner: owner, LeaseUntil: hour} }
	jobs := []*job.Job{
		held("blocker", "A"), held("ok", "A"), held("lost", "B"),
		held("sigok", "A"), held("signo", "A"), {ID: "claimok"}, held("claimno", "B"), held("lost2", "B"),
	}
	if err := s.CreateJobs(ctx, testSource(), jobs...); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"sigok", "signo"} {
		wait := []string{"go"}
		if id == "signo" {
			wait = []string{"other"}
		}
		if err := s.Apply(ctx, &job.Update{JobID: id, Owner: "A", State: ptr(job.Waiting), WaitFor: &wait, Release: true}); err != nil {
			t.Fatal(err)
		}
	}
	step := func(id string) *job.Update {
		return &job.Update{JobID: id, Owner: "A", State: ptr(job.Queued), Release: true,
			Steps:   []job.Step{{Key: "1", Activity: "now", Status: job.StepDone, Result: json.RawMessage(`1`), Started: now, Ended: now}},
			Records: []job.Record{{Stream: job.Output, Key: "1/emit/0", Value: json.RawMessage(`"x"`)}}}
	}
	l := listen(t, s)
	l.wait(t, "when listening starts")

	// One batch of accepted and refused requests.
	release := holdWriter(t, s, "blocker", "A")
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs = map[string]error{}
	)
	do := func(name string, f func() error) {
		wg.Go(func() {
			err := f()
			mu.Lock()
			errs[name] = err
			mu.Unlock()
		})
	}
	do("apply ok", func() error { return s.Apply(ctx, step("ok")) })
	do("apply lost", func() error { return s.Apply(ctx, step("lost")) })
	do("signal ok", func() error {
		_, err := s.Signal(ctx, &job.Signal{JobID: "sigok", Name: "go", Payload: json.RawMessage(`1`)})
		return err
	})
	do("signal refused", func() error {
		_, err := s.Signal(ctx, &job.Signal{JobID: "signo", Name: "go", Payload: json.RawMessage(`1`)})
		return err
	})
	do("claim ok", func() error {
		_, err := s.Claim(ctx, "claimok", "A", hour, "", []job.State{job.Queued})
		return err
	})
	do("claim refused", func() error {
		_, err := s.Claim(ctx, "claimno", "A", hour, "", []job.State{job.Queued, job.Interrupted})
		return err
	})
	do("delete missing", func() error { return s.DeleteJob(ctx, "missing") })
	queued(t, s, 7)
	release()
	wg.Wait()
	for name, want := range map[string]error{
		"apply ok": nil, "apply lost": job.ErrLeaseLost, "signal ok": nil, "signal refused": job.ErrNotWaiting,
		"claim ok": nil, "claim refused": job.ErrHeld, "delete missing": job.ErrNotFound,
	} {
		if err := errs[name]; want == nil && err != nil || want != nil && !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	l.wait(t, "accepted requests made jobs due")

	conn := storeConn(t, s)
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	// The accepted requests committed together...
	if n := count(`SELECT count(DISTINCT xmin::text) FROM jobs WHERE id IN ('ok', 'sigok', 'claimok')`); n != 1 {
		t.Errorf("the accepted requests committed in %d transactions, want 1 batch", n)
	}
	if n := count(`SELECT count(*) FROM steps WHERE job_id = 'ok'`) + count(`SELECT count(*) FROM records WHERE job_id = 'ok'`); n != 2 {
		t.Errorf("accepted Apply: %d steps and records, want 2", n)
	}
	if n := count(`SELECT count(*) FROM signals WHERE job_id = 'sigok'`); n != 1 {
		t.Errorf("accepted Signal: %d signals, want 1", n)
	}
	for id, want := range map[string]string{"ok": "queued", "sigok": "queued", "claimok": "running A", "lost": "running B", "signo": "waiting ", "claimno": "running B"} {
		j, err := s.Job(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%s %s", j.State, j.Owner); got != want && got != want+" " {
			t.Errorf("job %s: %s, want %s", id, got, want)
		}
	}
	// ...and the refused ones left nothing.
	if n := count(`SELECT count(*) FROM steps WHERE job_id = 'lost'`) + count(`SELECT count(*) FROM records WHERE job_id = 'lost'`); n != 0 {
		t.Errorf("refused Apply left %d steps and records", n)
	}
	if n := count(`SELECT count(*) FROM signals WHERE job_id = 'signo'`); n != 0 {
		t.Errorf("refused Signal left %d signals", n)
	}

	// A batch of refused requests that would have made jobs due wakes
	// nobody.
	release = holdWriter(t, s, "blocker", "A")
	do("apply lost", func() error { return s.Apply(ctx, step("lost2")) })
	do("signal refused", func() error {
		_, err := s.Signal(ctx, &job.Signal{JobID: "signo", Name: "go"})
		return err
	})
	do("set state refused", func() error {
		_, err := s.SetState(ctx, "claimno", []job.State{job.Suspended}, job.Queued, time.Now())
		return err
	})
	queued(t, s, 3)
	release()
	wg.Wait()
	if !errors.Is(errs["apply lost"], job.ErrLeaseLost) || !errors.Is(errs["signal refused"], job.ErrNotWaiting) || !errors.Is(errs["set state refused"], job.ErrHeld) {
		t.Errorf("refused requests: %v", errs)
	}
	l.none(t, "only refused requests")
}
