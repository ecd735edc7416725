package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/store/storetest"
)

func openTemp(t *testing.T) engine.Store {
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "drover.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, openTemp)
}

// TestContractSmallBatches runs the contract with batches of two, so that
// batches with failing requests in the middle of others are common.
func TestContractSmallBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	storetest.Run(t, func(t *testing.T) engine.Store {
		s, err := OpenOptions(context.Background(), filepath.Join(t.TempDir(), "drover.db"), Options{MaxBatch: 2, Readers: 2})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	})
}

func testSource() *job.Source {
	src := &job.Source{Entry: "main.star", Files: map[string]string{"main.star": "def main():\n    pass\n"}}
	src.Seal()
	return src
}

// seed creates a store at path holding job "a" with a step, a record and
// a signal, and closes it.
func seed(t *testing.T, path string) {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	src := testSource()
	if err := s.CreateJobs(ctx, src, &job.Job{ID: "a", Owner: "e", LeaseUntil: time.Now().Add(time.Hour)}); err != nil {
		t.Fatalf("CreateJobs: %v", err)
	}
	waiting := job.Waiting
	if err := s.Apply(ctx, &job.Update{JobID: "a", Owner: "e", State: &waiting, WaitFor: &[]string{"go"}, Release: true,
		Steps:   []job.Step{{Key: "1", Activity: "sh", Status: job.StepDone, Started: time.Now()}},
		Records: []job.Record{{Stream: job.Output, Key: "1/emit/0", Value: json.RawMessage(`"hi"`)}}}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if _, err := s.PutWorkflow(ctx, "flow", src, time.Now()); err != nil {
		t.Fatalf("PutWorkflow: %v", err)
	}
	if _, err := s.Signal(ctx, &job.Signal{JobID: "a", Name: "go", Payload: json.RawMessage(`{}`)}); err != nil {
		t.Fatalf("Signal: %v", err)
	}
}

// checkSeed checks what seed wrote.
func checkSeed(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	j, err := s.Job(ctx, "a")
	if err != nil {
		t.Fatalf("Job: %v", err)
	}
	if j.State != job.Queued || j.Steps != 1 {
		t.Errorf("job after reopen: state %s steps %d", j.State, j.Steps)
	}
	if steps, err := s.Journal(ctx, "a"); err != nil || len(steps) != 1 {
		t.Errorf("journal after reopen: %v, %v", steps, err)
	}
	if recs, err := s.Records(ctx, "a", job.Output, 0, 0); err != nil || len(recs) != 1 {
		t.Errorf("records after reopen: %v, %v", recs, err)
	}
	if sigs, err := s.Signals(ctx, "a"); err != nil || len(sigs) != 1 {
		t.Errorf("signals after reopen: %v, %v", sigs, err)
	}
	if w, err := s.Workflow(ctx, "flow"); err != nil || w.Version != 1 {
		t.Errorf("workflow after reopen: %v, %v", w, err)
	}
	if _, err := s.Source(ctx, testSource().Digest); err != nil {
		t.Errorf("source after reopen: %v", err)
	}
}

func TestReopen(t *testing.T) {
	// The directories are created; odd characters survive the URI.
	path := filepath.Join(t.TempDir(), "sub", "my dir?x=1#%41", "drover.db")
	seed(t, path)
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	checkSeed(t, s)
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the store is not at its path: %v", err)
	}
	var mode string
	if err := s.rdb.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
}

// TestCloseFlushes closes the store while writes are in flight: every write
// that reported success must be in the file afterwards, and the others
// must have failed cleanly.
func TestCloseFlushes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "drover.db")
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	src := testSource()
	const n = 200
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		okID []string
	)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			id := fmt.Sprintf("j%03d", i)
			if err := s.CreateJobs(ctx, src, &job.Job{ID: id}); err == nil {
				mu.Lock()
				okID = append(okID, id)
				mu.Unlock()
			} else if !strings.Contains(err.Error(), "closed") {
				t.Errorf("create %s: %v", id, err)
			}
		})
	}
	close(start)
	time.Sleep(200 * time.Microsecond)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.CreateJobs(ctx, src, &job.Job{ID: "late"}); err == nil {
		t.Errorf("write after Close succeeded")
	}

	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	all, err := s.Jobs(ctx, job.Filter{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(okID) {
		t.Errorf("%d jobs in the file, %d writes acknowledged", len(all), len(okID))
	}
	for _, id := range okID {
		if _, err := s.Job(ctx, id); err != nil {
			t.Errorf("acknowledged job %s: %v", id, err)
		}
	}
	t.Logf("%d of %d writes acknowledged before Close", len(okID), n)
}

func TestNotAStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	text := filepath.Join(dir, "notes.txt")
	content := strings.Repeat("these are my notes, not a database\n", 200)
	if err := os.WriteFile(text, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(ctx, text)
	if !errors.Is(err, job.ErrNotAStore) {
		t.Fatalf("Open(text file) = %v, want ErrNotAStore", err)
	}
	for _, m := range []string{text, "not an SQLite database", "point --db at a drover store or a new file"} {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not mention %q", err, m)
		}
	}
	if b, _ := os.ReadFile(text); string(b) != content {
		t.Errorf("Open changed the text file")
	}

	other := filepath.Join(dir, "other.db")
	db, err := sql.Open("sqlite", other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL); INSERT INTO invoices (total) VALUES (12.5)"); err != nil {
		t.Fatal(err)
	}
	_, err = Open(ctx, other)
	if !errors.Is(err, job.ErrNotAStore) {
		t.Fatalf("Open(foreign SQLite) = %v, want ErrNotAStore", err)
	}
	for _, m := range []string{other, "invoices", "point --db"} {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not mention %q", err, m)
		}
	}
	var tables int
	if err := db.QueryRow("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").Scan(&tables); err != nil || tables != 1 {
		t.Errorf("foreign database has %d tables (%v) after Open, want its 1", tables, err)
	}
	db.Close()

	// An empty file is a new store.
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, empty)
	if err != nil {
		t.Fatalf("Open(empty file): %v", err)
	}
	s.Close()
}

func TestSchemaNewer(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "drover.db")
	seed(t, path)
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	latest := len(ms)
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("UPDATE drover_schema SET version = ?", latest+1); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(ctx, path)
	if !errors.Is(err, job.ErrSchemaNewer) {
		t.Fatalf("Open = %v, want ErrSchemaNewer", err)
	}
	for _, m := range []string{path, fmt.Sprint("version ", latest+1), fmt.Sprint("up to ", latest), "upgrade drover"} {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not mention %q", err, m)
		}
	}
}

func TestMigrationsNumbered(t *testing.T) {
	ms, err := migrations()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) == 0 || ms[0].name != "0001_init.sql" {
		t.Errorf("migrations = %v", ms)
	}
	// A new store is at the latest version.
	s := openTemp(t).(*Store)
	defer s.Close()
	var v int
	if err := s.rdb.QueryRow("SELECT version FROM drover_schema").Scan(&v); err != nil || v != len(ms) {
		t.Errorf("version = %d, %v; want %d", v, err, len(ms))
	}
}

func TestReadOnlyOption(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "drover.db")
	if _, err := OpenOptions(ctx, path, Options{ReadOnly: true}); err == nil {
		t.Errorf("read-only Open of a missing file succeeded")
	}
	seed(t, path)
	s, err := OpenOptions(ctx, path, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only Open: %v", err)
	}
	defer s.Close()
	checkSeed(t, s)
	err = s.CreateJobs(ctx, testSource(), &job.Job{ID: "b"})
	if !errors.Is(err, job.ErrReadOnly) || !strings.Contains(err.Error(), path) {
		t.Errorf("write to a read-only store: %v, want ErrReadOnly naming the file", err)
	}
	if _, err := s.Job(ctx, "b"); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("refused write visible: %v", err)
	}
}

// TestReadOnlyFile makes the file and then its directory unwritable. As
// root, permissions do not stop writes, so the checks run in a copy of the
// test binary started as user nobody.
func TestReadOnlyFile(t *testing.T) {
	if os.Getenv("DROVER_RO_CHILD") != "" {
		t.Skip("the child runs TestReadOnlyChild")
	}
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	if err := os.Mkdir(store, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(store, "drover.db")
	seed(t, path)

	run := func(expect string) {
		t.Helper()
		if os.Geteuid() != 0 {
			readOnlyChecks(t, path, expect)
			return
		}
		out, err := runAsNobody(t, dir, path, expect)
		if err != nil {
			t.Errorf("child (%s): %v\n%s", expect, err, out)
		} else if testing.Verbose() {
			t.Logf("child (%s) as nobody:\n%s", expect, out)
		}
	}
	if os.Geteuid() == 0 {
		// nobody owns the store directory and the file but may not
		// write the file.
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{store, path} {
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Skipf("cannot hand the store to user nobody (%v); the error mapping is tested by TestReadOnlyOption", err)
			}
		}
		// t.TempDir's parent is private to root: let nobody through.
		if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		os.Chmod(store, 0o755)
		os.Chmod(path, 0o644)
	})
	if err := os.Chmod(path, 0o444); err != nil {
		t.Fatal(err)
	}
	run("readable")
	// The child leaves -wal and -shm files behind (it may not checkpoint
	// a read-only file); without them and with the directory read-only,
	// SQLite cannot read a WAL database at all.
	os.Remove(path + "-wal")
	os.Remove(path + "-shm")
	if err := os.Chmod(store, 0o555); err != nil {
		t.Fatal(err)
	}
	run("unreadable")
}

// readOnlyChecks opens a store this process may not write. expect is
// "readable": reads work and writes fail with ErrReadOnly; or
// "unreadable": Open fails with ErrReadOnly.
func readOnlyChecks(t *testing.T, path, expect string) {
	ctx := context.Background()
	s, err := Open(ctx, path)
	if expect == "unreadable" {
		if !errors.Is(err, job.ErrReadOnly) {
			t.Fatalf("Open of a store in a read-only directory = %v, want ErrReadOnly", err)
		}
		for _, m := range []string{path, "directory"} {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("error %q does not mention %q", err, m)
			}
		}
		return
	}
	if err != nil {
		t.Fatalf("Open of a read-only file: %v", err)
	}
	defer s.Close()
	checkSeed(t, s)
	err = s.CreateJobs(ctx, testSource(), &job.Job{ID: "b"})
	if !errors.Is(err, job.ErrReadOnly) {
		t.Fatalf("write to a read-only file = %v, want ErrReadOnly", err)
	}
	for _, m := range []string{path, "writable"} {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not mention %q", err, m)
		}
	}
	_, err = s.Claim(ctx, "a", "e2", time.Now().Add(time.Hour), "", []job.State{job.Queued})
	if !errors.Is(err, job.ErrReadOnly) {
		t.Errorf("Claim on a read-only file = %v, want ErrReadOnly", err)
	}
}

// runAsNobody runs TestReadOnlyChild in a copy of the test binary as user
// nobody.
func runAsNobody(t *testing.T, dir, path, expect string) ([]byte, error) {
	bin := filepath.Join(dir, "child.test")
	if _, err := os.Stat(bin); err != nil {
		self, err := os.Executable()
		if err != nil {
			t.Skipf("cannot find the test binary: %v", err)
		}
		if err := copyFile(self, bin); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "-test.run=^TestReadOnlyChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "DROVER_RO_CHILD="+path, "DROVER_RO_EXPECT="+expect)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil && errors.Is(err, syscall.EPERM) {
		t.Skipf("running as root and cannot switch to user nobody (%v); the error mapping is tested by TestReadOnlyOption", err)
	}
	if err == nil && !strings.Contains(string(out), "--- PASS: TestReadOnlyChild") {
		err = errors.New("the child did not run TestReadOnlyChild")
	}
	return out, err
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// TestReadOnlyChild is TestReadOnlyFile's half that runs as nobody.
func TestReadOnlyChild(t *testing.T) {
	path := os.Getenv("DROVER_RO_CHILD")
	if path == "" {
		t.Skip("run by TestReadOnlyFile")
	}
	readOnlyChecks(t, path, os.Getenv("DROVER_RO_EXPECT"))
}

func TestLocked(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "drover.db")
	seed(t, path)
	s, err := OpenOptions(ctx, path, Options{BusyTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	other, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN EXCLUSIVE"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, "UPDATE jobs SET name = 'other process'"); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	// Several writes at once: they share one batch and all fail.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			errs[i] = s.CreateJobs(ctx, testSource(), &job.Job{ID: fmt.Sprint("b", i)})
		})
	}
	wg.Wait()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("locked writes took %v", d)
	}
	for _, err := range errs {
		if !errors.Is(err, job.ErrStoreLocked) {
			t.Fatalf("write while locked = %v, want ErrStoreLocked", err)
		}
		for _, m := range []string{path, "100ms", "another process"} {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("error %q does not mention %q", err, m)
			}
		}
	}
	// WAL: reads go on, seeing the last commit.
	if j, err := s.Job(ctx, "a"); err != nil || j.Name != "" {
		t.Errorf("read while locked = %v, %v", j, err)
	}

	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJobs(ctx, testSource(), &job.Job{ID: "b"}); err != nil {
		t.Errorf("write after the lock ended: %v", err)
	}

	// A new store that another process has locked cannot be created.
	fresh := filepath.Join(t.TempDir(), "fresh.db")
	lock, err := sql.Open("sqlite", fresh)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	lconn, err := lock.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lconn.Close()
	if _, err := lconn.ExecContext(ctx, "BEGIN EXCLUSIVE; CREATE TABLE scratch (x)"); err != nil {
		t.Fatal(err)
	}
	_, err = OpenOptions(ctx, fresh, Options{BusyTimeout: 100 * time.Millisecond})
	if !errors.Is(err, job.ErrStoreLocked) {
		t.Errorf("Open of a locked new file = %v, want ErrStoreLocked", err)
	}
	lconn.ExecContext(ctx, "ROLLBACK")
}

// TestBatchRerun forces a batch's commit to fail: every request must then
// run again alone, the good ones committing.
func TestDeferredFailureReruns(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t).(*Store)
	defer s.Close()
	src := testSource()
	if err := s.CreateJobs(ctx, src, &job.Job{ID: "seed"}); err != nil {
		t.Fatal(err)
	}
	// A request that leaves a deferred foreign key violation behind
	// passes its savepoint and fails the batch's COMMIT.
	bad := func(w *writer) error {
		if _, err := w.conn.ExecContext(w.ctx, "PRAGMA defer_foreign_keys = ON"); err != nil {
			return err
		}
		_, err := w.conn.ExecContext(w.ctx, "INSERT INTO steps (job_id, key, status) VALUES ('nobody', '1', 'done')")
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	hold := make(chan struct{})
	// Occupy the writer so that the requests below queue into one batch.
	wg.Go(func() {
		_ = s.write(ctx, func(w *writer) error { <-hold; return nil })
	})
	time.Sleep(20 * time.Millisecond)
	for i := range errs {
		wg.Go(func() {
			if i == 3 {
				errs[i] = s.write(ctx, bad)
				return
			}
			errs[i] = s.CreateJobs(ctx, src, &job.Job{ID: fmt.Sprint("j", i)})
		})
	}
	time.Sleep(50 * time.Millisecond)
	close(hold)
	wg.Wait()
	for i, err := range errs {
		if i == 3 {
			if err == nil {
				t.Errorf("the bad request succeeded")
			}
			continue
		}
		if err != nil {
			t.Errorf("request %d failed with the bad one: %v", i, err)
		}
		if _, err := s.Job(ctx, fmt.Sprint("j", i)); err != nil {
			t.Errorf("job j%d: %v", i, err)
		}
	}
	var n int
	if err := s.rdb.QueryRow("SELECT count(*) FROM steps").Scan(&n); err != nil || n != 0 {
		t.Errorf("the bad request's row is stored: %d, %v", n, err)
	}
}
