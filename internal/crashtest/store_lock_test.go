package crashtest

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// A new store that another process is writing when drover first opens it
// (another drover creating it at the same moment) is waited for, up to
// the store's busy timeout: the first open must not fail at once with
// "store is locked".
//
// Fifty drover processes started together on a new store hit this about
// once in twenty tries; here a connection holds the file's write lock
// for 300ms, which makes it happen every time.
func TestFirstOpenWaitsForWriter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	db, err := sql.Open("sqlite", "file:"+e.db+"?mode=rwc")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A write transaction: the file's RESERVED lock, as a drover creating
	// the store's schema holds it.
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema").Scan(&n); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		_, _ = conn.ExecContext(ctx, "COMMIT")
		close(released)
	}()
	start := time.Now()
	p, code := e.drover(30*time.Second, "jobs")
	took := time.Since(start)
	<-released
	if code != 0 {
		msg := p.Stderr.String()
		t.Errorf("drover's first open of a store another connection was writing for 300ms failed after %s (busy timeout 5s):\n%s", took.Round(time.Millisecond), msg)
		if strings.Contains(msg, "more than 5s") && took < 5*time.Second {
			t.Errorf("and the error says the lock was held for more than 5s")
		}
	}
}
