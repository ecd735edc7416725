package storetest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// ServerStore is a store with what drover server uses beyond the engine's
// contract: API tokens, and the listings behind its due queue, metrics
// and event streams.
type ServerStore interface {
	engine.Store
	CreateToken(ctx context.Context, t *auth.Token) error
	TokenByHash(ctx context.Context, hash string) (*auth.Token, error)
	TouchToken(ctx context.Context, name string, at time.Time) error
	Tokens(ctx context.Context) ([]*auth.Token, error)
	DeleteToken(ctx context.Context, name string) error
	DueTopLevel(ctx context.Context, now time.Time, limit int) ([]string, error)
	CountJobs(ctx context.Context, now time.Time, topLevel bool) (map[job.State]int, error)
}

// recordFollower is the optional capability behind the server's event
// streams of a job with its children (the SQLite store has it; without
// it the server follows each stream on its own).
type recordFollower interface {
	RecordsSince(ctx context.Context, jobID string, family bool, after int64, limit int) ([]job.Record, error)
	LastSeq(ctx context.Context, jobID string, family bool) (int64, error)
}

// RunServer runs the server's part of the contract against stores made
// by open, as Run does.
func RunServer(t *testing.T, open func(t *testing.T) ServerStore) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s ServerStore)
	}{
		{"Tokens", testTokens},
		{"ServerQueries", testServerQueries},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

func testTokens(t *testing.T, s ServerStore) {
	ctx := context.Background()
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
	// PostgreSQL keeps microseconds.
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

func testServerQueries(t *testing.T, s ServerStore) {
	ctx := context.Background()
	src := source("server")
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
	jobs[0].CreatedBy = "alice"
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
	mine, err := s.Jobs(ctx, job.Filter{CreatedBy: "alice"}, time.Now())
	if err != nil || len(mine) != 1 || mine[0].ID != "a" || mine[0].CreatedBy != "alice" {
		t.Errorf("Jobs of alice = %v, %v", mine, err)
	}

	if rf, ok := s.(recordFollower); ok {
		testFamilyRecords(t, s, rf)
	}

	// A running job whose lease expired counts as interrupted.
	if _, err := s.Claim(ctx, "a", "E", time.Now().Add(-time.Second), "", []job.State{job.Queued}); err != nil {
		t.Fatal(err)
	}
	if top, _ := s.CountJobs(ctx, time.Now(), true); top[job.Interrupted] != 1 || top[job.Queued] != 1 {
		t.Errorf("CountJobs with an expired lease = %v", top)
	}
}

// testFamilyRecords reads the records testServerQueries' jobs: p's own
// and its children's, in Seq order, by pages.
func testFamilyRecords(t *testing.T, s ServerStore, rf recordFollower) {
	ctx := context.Background()
	recs := []job.Record{
		{JobID: "p", Stream: job.Log, Key: "1"},
		{JobID: "p.1", Stream: job.Output, Key: "1", Value: []byte(`1`)},
		{JobID: "a", Stream: job.Output, Key: "1", Value: []byte(`2`)},
		{JobID: "p.2", Stream: job.Log, Key: "1"},
		{JobID: "p", Stream: job.Output, Key: "2", Value: []byte(`3`)},
	}
	if err := s.AppendRecords(ctx, recs); err != nil {
		t.Fatal(err)
	}
	got, err := rf.RecordsSince(ctx, "p", false, 0, 0)
	if err != nil || len(got) != 2 || got[0].Stream != job.Log || got[1].Stream != job.Output || got[0].Seq >= got[1].Seq {
		t.Errorf("RecordsSince p = %+v, %v", got, err)
	}
	fam, err := rf.RecordsSince(ctx, "p", true, 0, 0)
	if err != nil || len(fam) != 4 {
		t.Fatalf("RecordsSince p family = %+v, %v", fam, err)
	}
	for i := 1; i < len(fam); i++ {
		if fam[i].Seq <= fam[i-1].Seq {
			t.Errorf("family records out of order: %+v", fam)
		}
	}
	if n, err := rf.LastSeq(ctx, "p", false); err != nil || n != got[1].Seq {
		t.Errorf("LastSeq p = %d, %v; want %d", n, err, got[1].Seq)
	}
	if n, err := rf.LastSeq(ctx, "p", true); err != nil || n != fam[3].Seq {
		t.Errorf("LastSeq p family = %d, %v; want %d", n, err, fam[3].Seq)
	}
	if n, err := rf.LastSeq(ctx, "w", true); err != nil || n != 0 {
		t.Errorf("LastSeq of a job without records = %d, %v", n, err)
	}
	page, _ := rf.RecordsSince(ctx, "p", true, fam[0].Seq, 2)
	if len(page) != 2 || page[0].Seq != fam[1].Seq {
		t.Errorf("a page after %d = %+v", fam[0].Seq, page)
	}
}
