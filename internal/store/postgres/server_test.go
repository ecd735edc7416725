package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/server"
)

// The store is what a drover server on PostgreSQL needs.
var (
	_ server.TokenStore = (*Store)(nil)
	_ interface {
		DueTopLevel(ctx context.Context, now time.Time, limit int) ([]string, error)
		CountJobs(ctx context.Context, now time.Time, topLevel bool) (map[job.State]int, error)
		ClaimDue(ctx context.Context, owner string, until, now time.Time, limit int, topLevel bool) ([]*job.Job, error)
	} = (*Store)(nil)
)

func TestTokens(t *testing.T) {
	ctx := context.Background()
	s, _ := openFresh(t, Options{})
	secret, hash, err := auth.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	tok := &auth.Token{Name: "alice", Role: auth.Operator, Hash: hash}
	if err := s.CreateToken(ctx, tok); err != nil {
		t.Fatalf("CreateToken: %v", err)
	}
	if err := s.CreateToken(ctx, &auth.Token{Name: "alice", Role: auth.Admin, Hash: "other"}); !errors.Is(err, auth.ErrExists) {
		t.Errorf("a second alice: %v, want ErrExists", err)
	}
	got, err := s.TokenByHash(ctx, auth.Hash(secret))
	if err != nil || got.Name != "alice" || got.Role != auth.Operator || got.Created.IsZero() || !got.LastUsed.IsZero() {
		t.Fatalf("TokenByHash = %+v, %v", got, err)
	}
	if _, err := s.TokenByHash(ctx, auth.Hash("nope")); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("unknown token: %v", err)
	}
	at := time.Now().Add(-time.Hour)
	if err := s.TouchToken(ctx, "alice", at); err != nil {
		t.Fatal(err)
	}
	list, err := s.Tokens(ctx)
	if err != nil || len(list) != 1 || list[0].LastUsed.Sub(at).Abs() >= time.Millisecond {
		t.Fatalf("Tokens = %+v, %v", list, err)
	}
	if err := s.DeleteToken(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteToken(ctx, "alice"); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("second delete: %v", err)
	}
	if _, err := s.TokenByHash(ctx, auth.Hash(secret)); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("a deleted token still works: %v", err)
	}
}

func TestServerQueries(t *testing.T) {
	ctx := context.Background()
	s, _ := openFresh(t, Options{})
	src := testSource()
	base := time.Now().Add(-time.Minute)
	mk := func(id, parent string, st job.State, at time.Duration) *job.Job {
		return &job.Job{ID: id, ParentID: parent, State: st, Digest: src.Digest, CreatedBy: "bob", Created: base.Add(at)}
	}
	jobs := []*job.Job{
		mk("a", "", job.Queued, 3*time.Second),
		mk("p", "", job.Suspended, 1*time.Second),
		mk("p.1", "p", job.Queued, 1*time.Second),
		mk("p.2", "p", job.Queued, 2*time.Second),
		mk("b", "", job.Queued, 2*time.Second),
	}
	w := mk("w", "", job.Waiting, 0)
	w.WakeAt = base
	cw := mk("p.3", "p", job.Waiting, 0)
	cw.WakeAt = base
	jobs = append(jobs, w, cw)
	if err := s.CreateJobs(ctx, src, jobs...); err != nil {
		t.Fatal(err)
	}
	due, err := s.DueTopLevel(ctx, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(due, " "), "w b a"; got != want {
		t.Errorf("DueTopLevel = %s, want %s", got, want)
	}
	due, _ = s.DueTopLevel(ctx, time.Now(), 2)
	if got, want := strings.Join(due, " "), "w b"; got != want {
		t.Errorf("DueTopLevel limit 2 = %s, want %s", got, want)
	}
	all, err := s.CountJobs(ctx, time.Now(), false)
	if err != nil || all[job.Queued] != 4 || all[job.Waiting] != 2 || all[job.Suspended] != 1 {
		t.Errorf("CountJobs = %v, %v", all, err)
	}
	top, _ := s.CountJobs(ctx, time.Now(), true)
	if top[job.Queued] != 2 || top[job.Waiting] != 1 {
		t.Errorf("CountJobs top-level = %v", top)
	}
	if _, err := s.Claim(ctx, "a", "E", time.Now().Add(-time.Second), "", []job.State{job.Queued}); err != nil {
		t.Fatal(err)
	}
	if top, _ := s.CountJobs(ctx, time.Now(), true); top[job.Interrupted] != 1 || top[job.Queued] != 1 {
		t.Errorf("CountJobs with an expired lease = %v", top)
	}
}

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
