package postgres

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/pgtest"
)

// lockedBuffer is a log destination the store's goroutines share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestPasswordAuth runs against a server of the test's own that asks for
// a password (scram-sha-256): a wrong password fails Open without showing
// either password; with the right one, the store works, and when the
// server goes away and comes back neither its errors nor its logs (debug
// level included) show the password, while the logs say the database is
// unavailable and available again.
func TestPasswordAuth(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server")
	}
	const pw, wrong = "Corr3ct-Horse-pw", "Wr0ng-Battery-pw"
	pg := pgtest.New(t, pgtest.Options{Password: pw})
	ctx := context.Background()
	url := func(pass string, params ...string) string {
		u := fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable", pass, pg.Port)
		for i := 0; i+1 < len(params); i += 2 {
			u += "&" + params[i] + "=" + params[i+1]
		}
		return u
	}
	shows := func(s string) bool { return strings.Contains(s, pw) || strings.Contains(s, wrong) }

	if _, err := OpenOptions(ctx, url(wrong), Options{Logger: quiet()}); err == nil {
		t.Fatal("Open with a wrong password succeeded")
	} else if shows(err.Error()) || !strings.Contains(err.Error(), "password") {
		t.Errorf("Open with a wrong password: %v; want an authentication error without the password", err)
	} else {
		t.Logf("wrong password: %v", err)
	}
	if _, err := OpenOptions(ctx, strings.Replace(url(pw), "sslmode=disable", "sslmode=require", 1), Options{Logger: quiet()}); err == nil {
		t.Error("sslmode=require against a server without TLS succeeded")
	} else if shows(err.Error()) {
		t.Errorf("sslmode=require: %v shows the password", err)
	} else {
		t.Logf("sslmode=require: %v", err)
	}

	var logs lockedBuffer
	s, err := OpenOptions(ctx, url(pw, "pool_max_conns", "4", "statement_timeout", "5000"), Options{
		RetryFor: 2 * time.Second,
		Logger:   slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("Open with the password: %v", err)
	}
	defer s.Close()
	if shows(s.Name()) {
		t.Errorf("Name() = %s shows the password", s.Name())
	}
	if got := s.pool.Config().MaxConns; got != 4 {
		t.Errorf("pool_max_conns=4: MaxConns %d", got)
	}
	if err := s.CreateJobs(ctx, testSource(), &job.Job{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	lctx, stopListen := context.WithCancel(ctx)
	defer stopListen()
	go s.Listen(lctx, func() {})

	pg.Stop()
	var errs []error
	if _, err := s.Job(ctx, "a"); err == nil {
		t.Error("read with the server stopped succeeded")
	} else {
		errs = append(errs, err)
	}
	if err := s.CreateJobs(ctx, nil, &job.Job{ID: "b", Digest: testSource().Digest}); err == nil {
		t.Error("write with the server stopped succeeded")
	} else {
		errs = append(errs, err)
	}
	pg.Start()
	if _, err := s.Job(ctx, "a"); err != nil {
		t.Errorf("read after the server came back: %v", err)
	}
	for _, err := range errs {
		if shows(err.Error()) || shows(fmt.Sprintf("%+v", err)) {
			t.Errorf("error shows the password: %v", err)
		}
		t.Logf("with the server stopped: %v", err)
	}
	text := logs.String()
	if shows(text) {
		t.Errorf("the logs show the password:\n%s", text)
	}
	for _, want := range []string{"database unavailable", "database available again"} {
		if !strings.Contains(text, want) {
			t.Errorf("the logs do not say %q:\n%s", want, text)
		}
	}
}
