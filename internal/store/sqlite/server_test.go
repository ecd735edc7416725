package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/job"
)

func openServerStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "drover.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestTokens(t *testing.T) {
	ctx := context.Background()
	s := openServerStore(t)
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
	if err != nil || got.Name != "alice" || got.Role != auth.Operator || got.Created.IsZero() {
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
	if err != nil || len(list) != 1 || !list[0].LastUsed.Equal(time.Unix(0, at.UnixNano())) {
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
	s := openServerStore(t)
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
	if got, want := join(due), "w b a"; got != want {
		t.Errorf("DueTopLevel = %s, want %s", got, want)
	}
	due, _ = s.DueTopLevel(ctx, time.Now(), 2)
	if got, want := join(due), "w b"; got != want {
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
	got, err := s.RecordsSince(ctx, "p", false, 0, 0)
	if err != nil || len(got) != 2 || got[0].Stream != job.Log || got[1].Stream != job.Output || got[0].Seq >= got[1].Seq {
		t.Errorf("RecordsSince p = %+v, %v", got, err)
	}
	fam, err := s.RecordsSince(ctx, "p", true, 0, 0)
	if err != nil || len(fam) != 4 {
		t.Fatalf("RecordsSince p family = %+v, %v", fam, err)
	}
	for i := 1; i < len(fam); i++ {
		if fam[i].Seq <= fam[i-1].Seq {
			t.Errorf("family records out of order: %+v", fam)
		}
	}
	if n, err := s.LastSeq(ctx, "p", false); err != nil || n != got[1].Seq {
		t.Errorf("LastSeq p = %d, %v; want %d", n, err, got[1].Seq)
	}
	if n, err := s.LastSeq(ctx, "p", true); err != nil || n != fam[3].Seq {
		t.Errorf("LastSeq p family = %d, %v; want %d", n, err, fam[3].Seq)
	}
	if n, err := s.LastSeq(ctx, "w", true); err != nil || n != 0 {
		t.Errorf("LastSeq of a job without records = %d, %v", n, err)
	}
	page, _ := s.RecordsSince(ctx, "p", true, fam[0].Seq, 2)
	if len(page) != 2 || page[0].Seq != fam[1].Seq {
		t.Errorf("a page after %d = %+v", fam[0].Seq, page)
	}
}

func join(ids []string) string {
	out := ""
	for i, id := range ids {
		if i > 0 {
			out += " "
		}
		out += id
	}
	return out
}
