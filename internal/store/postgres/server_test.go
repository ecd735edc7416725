package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/store/storetest"
)

func TestServerContract(t *testing.T) {
	adminConn(t).Close(context.Background()) // skip once, not in every subtest
	storetest.RunServer(t, func(t *testing.T) storetest.ServerStore {
		return openURL(t, freshDB(t), Options{})
	})
}

// The store is what a drover server on PostgreSQL needs.
var (
	_ server.TokenStore = (*Store)(nil)
	_ interface {
		DueTopLevel(ctx context.Context, now time.Time, limit int) ([]string, error)
		CountJobs(ctx context.Context, now time.Time, topLevel bool) (map[job.State]int, error)
		ClaimDue(ctx context.Context, owner string, until, now time.Time, limit int, topLevel bool) ([]*job.Job, error)
	} = (*Store)(nil)
)

func TestClaimDue(t *testing.T) {
	ctx := context.Background()
	s, _ := openFresh(t, Options{})
	src := testSource()
	now := time.Now()
	base := now.Add(-time.Minute)
	mk := func(id, parent string, at time.Duration) *job.Job {
		return &job.Job{ID: id, ParentID: parent, Created: base.Add(at)}
	}
	held := mk("held", "", 0)
	held.Owner, held.LeaseUntil = "other", now.Add(time.Hour)
	if err := s.CreateJobs(ctx, src, mk("b", "", 2*time.Second), mk("a", "", time.Second), mk("p", "", 3*time.Second),
		mk("p.1", "p", 4*time.Second), held, mk("w", "", 5*time.Second), mk("later", "", 6*time.Second)); err != nil {
		t.Fatal(err)
	}
	for id, wake := range map[string]time.Time{"w": now.Add(-time.Second), "later": now.Add(time.Hour)} {
		if _, err := s.Claim(ctx, id, "setup", now.Add(time.Hour), "", []job.State{job.Queued}); err != nil {
			t.Fatal(err)
		}
		if err := s.Apply(ctx, &job.Update{JobID: id, Owner: "setup", State: ptr(job.Waiting), WakeAt: &wake, Release: true}); err != nil {
			t.Fatal(err)
		}
	}
	until := now.Add(time.Minute)
	got, err := s.ClaimDue(ctx, "E", until, time.Now(), 3, true)
	if err != nil {
		t.Fatal(err)
	}
	if ids := jobIDs(got); ids != "a b p" {
		t.Fatalf("ClaimDue limit 3 = %s, want a b p", ids)
	}
	for _, j := range got {
		if j.State != job.Running || j.Owner != "E" || j.Runs != 1 || j.Started.IsZero() || j.LeaseUntil.Sub(until).Abs() >= time.Millisecond {
			t.Errorf("claimed %s: %+v", j.ID, j)
		}
	}
	got, err = s.ClaimDue(ctx, "F", until, time.Now(), 10, true)
	if err != nil || jobIDs(got) != "w" {
		t.Errorf("ClaimDue of the rest (top-level) = %s, %v; want w", jobIDs(got), err)
	}
	if got, err := s.ClaimDue(ctx, "F", until, time.Now(), 10, false); err != nil || jobIDs(got) != "p.1" {
		t.Errorf("ClaimDue with children = %s, %v; want p.1", jobIDs(got), err)
	}
	if got, err := s.ClaimDue(ctx, "F", until, time.Now(), 10, false); err != nil || len(got) != 0 {
		t.Errorf("ClaimDue with nothing due = %s, %v", jobIDs(got), err)
	}
	// The claims are claims: the holder applies, others are fenced out.
	if err := s.Apply(ctx, &job.Update{JobID: "a", Owner: "E", State: ptr(job.Completed), Release: true}); err != nil {
		t.Errorf("Apply by the claimer: %v", err)
	}
	if err := s.Apply(ctx, &job.Update{JobID: "b", Owner: "F", State: ptr(job.Completed)}); !errors.Is(err, job.ErrLeaseLost) {
		t.Errorf("Apply by another: %v", err)
	}
}

// TestClaimDueTwoStores has two stores, as two servers, claim the same
// queue with ClaimDue from many goroutines: each job once.
func TestClaimDueTwoStores(t *testing.T) {
	a, u := openFresh(t, Options{})
	b := openURL(t, u, Options{})
	defer b.Close()
	ctx := context.Background()
	const n = 400
	var jobs []*job.Job
	for i := range n {
		jobs = append(jobs, &job.Job{ID: fmt.Sprintf("j-%04d", i)})
	}
	if err := a.CreateJobs(ctx, testSource(), jobs...); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		claimed = map[string]string{}
		wg      sync.WaitGroup
	)
	for si, st := range []*Store{a, b} {
		for w := range 8 {
			owner := fmt.Sprintf("server-%d/%d", si, w)
			wg.Go(func() {
				for {
					got, err := st.ClaimDue(ctx, owner, time.Now().Add(time.Minute), time.Now(), 8, true)
					if err != nil {
						t.Errorf("ClaimDue: %v", err)
						return
					}
					if len(got) == 0 {
						return
					}
					mu.Lock()
					for _, j := range got {
						if prev, ok := claimed[j.ID]; ok {
							t.Errorf("job %s claimed by %s and %s", j.ID, prev, owner)
						}
						claimed[j.ID] = owner
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(claimed) != n {
		t.Errorf("%d jobs claimed, want %d", len(claimed), n)
	}
	all, _ := a.Jobs(ctx, job.Filter{}, time.Now())
	for _, j := range all {
		if j.Runs != 1 || j.Owner != claimed[j.ID] {
			t.Errorf("job %s: runs %d owner %q, claimed by %q", j.ID, j.Runs, j.Owner, claimed[j.ID])
		}
	}
}

func jobIDs(jobs []*job.Job) string {
	ids := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i] = j.ID
	}
	return strings.Join(ids, " ")
}

// TestClaimDueTakesOverExpired: ClaimDue takes the running jobs of other
// owners whose lease expired, never its own nor a live lease, and not
// until the database has been reachable for twice the lease after an
// outage, so that their holders can renew first.
func TestClaimDueTakesOverExpired(t *testing.T) {
	ctx := context.Background()
	s, _ := openFresh(t, Options{})
	now := time.Now()
	mk := func(id, owner string, lease time.Duration) *job.Job {
		return &job.Job{ID: id, Created: now.Add(-time.Minute), Owner: owner, LeaseUntil: now.Add(lease)}
	}
	if err := s.CreateJobs(ctx, testSource(), mk("dead", "X", -time.Second), mk("live", "X", time.Hour), mk("mine", "E", -time.Second),
		// A script between drover step blocks does not renew its lease.
		mk("script", "h:1:2:script", -time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dead", "live", "mine", "script"} {
		if j, err := s.Job(ctx, id); err != nil || j.State != job.Running {
			t.Fatalf("job %s created with an owner: %+v, %v; want running", id, j, err)
		}
	}
	const lease = 150 * time.Millisecond
	// An outage just ended: the expired lease is left to its holder.
	s.unreachable("test", 1, errors.New("connection refused"))
	s.reachable()
	if got, err := s.ClaimDue(ctx, "E", time.Now().Add(lease), time.Now(), 10, true); err != nil || len(got) != 0 {
		t.Fatalf("ClaimDue right after an outage = %s, %v; want nothing", jobIDs(got), err)
	}
	time.Sleep(2*lease + 50*time.Millisecond)
	got, err := s.ClaimDue(ctx, "E", time.Now().Add(lease), time.Now(), 10, true)
	if err != nil || jobIDs(got) != "dead" {
		t.Fatalf("ClaimDue = %s, %v; want dead", jobIDs(got), err)
	}
	if j := got[0]; j.Owner != "E" || j.Runs < 1 || j.State != job.Running {
		t.Errorf("taken over: %+v", j)
	}
	if err := s.Apply(ctx, &job.Update{JobID: "dead", Owner: "X", State: ptr(job.Completed)}); !errors.Is(err, job.ErrLeaseLost) {
		t.Errorf("Apply by the old holder: %v, want ErrLeaseLost", err)
	}
}
