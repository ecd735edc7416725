package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/pgtest"
	"github.com/drover/drover/internal/store/storetest"
)

// The tests need a PostgreSQL server on which the user may create
// databases: DROVER_TEST_POSTGRES names it (a URL of any database there),
// by default the local server with trust authentication. Without one the
// tests skip, unless DROVER_REQUIRE_POSTGRES=1 (CI), when they fail.
const defaultTestURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func testURL() string {
	if u := os.Getenv("DROVER_TEST_POSTGRES"); u != "" {
		return u
	}
	return defaultTestURL
}

// adminConn connects to the test server's maintenance database, skipping
// (or failing, when required) the test if there is no server.
func adminConn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, testURL())
	if err != nil {
		msg := fmt.Sprintf("no PostgreSQL at %s: %v", Redact(testURL()), err)
		if os.Getenv("DROVER_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("%s (DROVER_REQUIRE_POSTGRES=1)", msg)
		}
		t.Skipf("%s; set DROVER_TEST_POSTGRES=postgres://user:password@host:port/db to a server where the user may create databases to run these tests", msg)
	}
	return conn
}

// freshDB creates an empty database for the test, dropped when the test
// ends, and returns its URL.
func freshDB(t testing.TB) string {
	t.Helper()
	conn := adminConn(t)
	defer conn.Close(context.Background())
	b := make([]byte, 6)
	rand.Read(b)
	name := "drover_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(context.Background(), "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		conn := adminConn(t)
		defer conn.Close(context.Background())
		ctx := context.Background()
		if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name); err != nil {
			t.Errorf("terminate the connections to %s: %v", name, err)
		}
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	return withPath(t, testURL(), "/"+name)
}

// withPath returns u with another path (database) and extra parameters.
func withPath(t testing.TB, raw, path string, params ...string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse %s: %v", Redact(raw), err)
	}
	if path != "" {
		u.Path = path
	}
	q := u.Query()
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func openURL(t testing.TB, u string, opt Options) *Store {
	t.Helper()
	if opt.Logger == nil {
		opt.Logger = quiet()
	}
	s, err := OpenOptions(context.Background(), u, opt)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// openFresh opens a store on a fresh database and closes it at the end.
func openFresh(t testing.TB, opt Options) (*Store, string) {
	t.Helper()
	u := freshDB(t)
	s := openURL(t, u, opt)
	t.Cleanup(func() { s.Close() })
	return s, u
}

func TestContract(t *testing.T) {
	adminConn(t).Close(context.Background()) // skip once, not in every subtest
	storetest.Run(t, func(t *testing.T) engine.Store {
		return openURL(t, freshDB(t), Options{})
	})
}

// TestContractSmallBatches runs the contract with batches of two and one
// writer, so that batches with failing requests among others are common.
func TestContractSmallBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	adminConn(t).Close(context.Background())
	storetest.Run(t, func(t *testing.T) engine.Store {
		return openURL(t, freshDB(t), Options{MaxBatch: 2, Writers: 1})
	})
}

func testSource() *job.Source {
	src := &job.Source{Entry: "main.star", Files: map[string]string{"main.star": "def main():\n    pass\n"}}
	src.Seal()
	return src
}

func ptr[T any](v T) *T { return &v }

// TestClaimTwoStores has two stores on one database, as two servers, take
// up the same due jobs at once: every job is claimed exactly once.
func TestClaimTwoStores(t *testing.T) {
	a, u := openFresh(t, Options{})
	b := openURL(t, u, Options{})
	defer b.Close()
	ctx := context.Background()
	const n = 300
	var jobs []*job.Job
	base := time.Now().Add(-time.Hour)
	for i := range n {
		jobs = append(jobs, &job.Job{ID: fmt.Sprintf("j-%04d", i), Created: base.Add(time.Duration(i) * time.Millisecond)})
	}
	if err := a.CreateJobs(ctx, testSource(), jobs...); err != nil {
		t.Fatalf("CreateJobs: %v", err)
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
					ids, err := st.Due(ctx, time.Now(), 16)
					if err != nil {
						t.Errorf("Due: %v", err)
						return
					}
					if len(ids) == 0 {
						return
					}
					for _, id := range ids {
						j, err := st.Claim(ctx, id, owner, time.Now().Add(time.Minute), "", []job.State{job.Queued})
						if errors.Is(err, job.ErrHeld) || errors.Is(err, job.ErrWrongState) {
							continue
						}
						if err != nil {
							t.Errorf("Claim %s: %v", id, err)
							return
						}
						mu.Lock()
						if prev, ok := claimed[id]; ok {
							t.Errorf("job %s claimed by %s and %s", id, prev, owner)
						}
						claimed[id] = owner
						mu.Unlock()
						if j.Runs != 1 {
							t.Errorf("job %s claimed with Runs %d", id, j.Runs)
						}
						if err := st.Apply(ctx, &job.Update{JobID: id, Owner: owner, State: ptr(job.Completed), Release: true}); err != nil {
							t.Errorf("Apply %s: %v", id, err)
						}
					}
				}
			})
		}
	}
	wg.Wait()
	if len(claimed) != n {
		t.Errorf("%d jobs claimed, want %d", len(claimed), n)
	}
	perServer := map[string]int{}
	for _, o := range claimed {
		perServer[o[:len("server-0")]]++
	}
	t.Logf("claims per server: %v", perServer)
	all, err := a.Jobs(ctx, job.Filter{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range all {
		if j.State != job.Completed || j.Runs != 1 {
			t.Errorf("job %s: state %s runs %d, want completed 1", j.ID, j.State, j.Runs)
		}
	}
}

// TestConcurrentOpen opens one new database from many stores at once: the
// advisory lock makes one of them migrate and the others find it done.
func TestConcurrentOpen(t *testing.T) {
	u := freshDB(t)
	const n = 8
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			stores[i], errs[i] = OpenOptions(context.Background(), u, Options{Logger: quiet()})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Open %d: %v", i, err)
			continue
		}
		defer stores[i].Close()
	}
	if t.Failed() {
		return
	}
	cur, latest, err := stores[0].SchemaVersion(context.Background())
	if err != nil || cur != latest || latest < 1 {
		t.Errorf("SchemaVersion = %d, %d, %v; want the latest", cur, latest, err)
	}
	var rows int
	if err := stores[0].pool.QueryRow(context.Background(), "SELECT count(*) FROM drover.drover_schema").Scan(&rows); err != nil || rows != 1 {
		t.Errorf("version table has %d rows (%v), want 1", rows, err)
	}
	// Every store works on the one schema.
	if err := stores[3].CreateJobs(context.Background(), testSource(), &job.Job{ID: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := stores[5].Job(context.Background(), "x"); err != nil {
		t.Errorf("job created by one store, read by another: %v", err)
	}
}

// TestSchemaVersions covers Migrate, SchemaVersion and a database newer
// than the binary.
func TestSchemaVersions(t *testing.T) {
	u := freshDB(t)
	ctx := context.Background()
	s := openURL(t, u, Options{NoMigrate: true})
	cur, latest, err := s.SchemaVersion(ctx)
	if err != nil || cur != 0 || latest < 1 {
		t.Fatalf("SchemaVersion of a new database = %d, %d, %v; want 0 and the latest", cur, latest, err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if cur, _, err := s.SchemaVersion(ctx); err != nil || cur != latest {
		t.Fatalf("SchemaVersion after Migrate = %d, %v; want %d", cur, err, latest)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	newer := latest + 4
	if _, err := s.pool.Exec(ctx, "UPDATE drover.drover_schema SET version = $1", newer); err != nil {
		t.Fatal(err)
	}
	s.Close()

	_, err = OpenOptions(ctx, u, Options{Logger: quiet()})
	if !errors.Is(err, job.ErrSchemaNewer) {
		t.Fatalf("Open of a newer schema: %v, want ErrSchemaNewer", err)
	}
	for _, v := range []int{newer, latest} {
		if !strings.Contains(err.Error(), fmt.Sprint(v)) {
			t.Errorf("error %q does not name version %d", err, v)
		}
	}
	s = openURL(t, u, Options{NoMigrate: true})
	defer s.Close()
	if cur, l, err := s.SchemaVersion(ctx); err != nil || cur != newer || l != latest {
		t.Errorf("SchemaVersion of a newer schema = %d, %d, %v; want %d, %d", cur, l, err, newer, latest)
	}
	if err := s.Migrate(ctx); !errors.Is(err, job.ErrSchemaNewer) {
		t.Errorf("Migrate of a newer schema: %v, want ErrSchemaNewer", err)
	}
}

// TestSharedDatabase puts drover in a database that other applications
// use: its tables go in a schema of their own, by default or named by the
// URL's search_path, and a schema holding somebody else's table of the
// same name is refused with a message that says what to do.
func TestSharedDatabase(t *testing.T) {
	u := freshDB(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE TABLE public.jobs (ticket int PRIMARY KEY); INSERT INTO public.jobs VALUES (42)"); err != nil {
		t.Fatal(err)
	}

	def := openURL(t, u, Options{})
	defer def.Close()
	if def.Schema() != "drover" {
		t.Errorf("default schema %q, want drover", def.Schema())
	}
	if err := def.CreateJobs(ctx, testSource(), &job.Job{ID: "in-drover"}); err != nil {
		t.Fatalf("CreateJobs: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM drover.jobs").Scan(&n); err != nil || n != 1 {
		t.Errorf("drover.jobs has %d rows (%v), want 1", n, err)
	}
	if err := conn.QueryRow(ctx, "SELECT ticket FROM public.jobs").Scan(&n); err != nil || n != 42 {
		t.Errorf("the other application's table: %d, %v", n, err)
	}

	other := openURL(t, withPath(t, u, "", "search_path", "drover_x"), Options{})
	defer other.Close()
	if other.Schema() != "drover_x" {
		t.Errorf("schema %q, want drover_x", other.Schema())
	}
	if _, err := other.Job(ctx, "in-drover"); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("a job of schema drover seen in drover_x: %v", err)
	}
	if err := other.CreateJobs(ctx, testSource(), &job.Job{ID: "in-x"}); err != nil {
		t.Fatalf("CreateJobs in drover_x: %v", err)
	}
	if _, err := def.Job(ctx, "in-x"); !errors.Is(err, job.ErrNotFound) {
		t.Errorf("a job of schema drover_x seen in drover: %v", err)
	}

	_, err = OpenOptions(ctx, withPath(t, u, "", "search_path", "public"), Options{Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "not drover's") || !strings.Contains(err.Error(), "search_path") {
		t.Errorf("Open on a schema with another jobs table: %v, want a message about search_path", err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&n); err != nil || n != 1 {
		t.Errorf("public has %d tables after the refused migration (%v), want only the application's", n, err)
	}

	if _, err := OpenOptions(ctx, withPath(t, u, "", "search_path", "$user,public"), Options{Logger: quiet()}); err == nil {
		t.Errorf("Open with search_path $user,public succeeded")
	}
}

// listener runs Listen and counts its calls.
type listener struct {
	calls chan struct{}
	stop  context.CancelFunc
	done  chan struct{}
}

func listen(t *testing.T, s *Store) *listener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{calls: make(chan struct{}, 100), stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		s.Listen(ctx, func() {
			select {
			case l.calls <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-l.done
	})
	return l
}

func (l *listener) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-l.calls:
	case <-time.After(10 * time.Second):
		t.Fatalf("no call of the listener: %s", what)
	}
}

func (l *listener) none(t *testing.T, what string) {
	t.Helper()
	select {
	case <-l.calls:
		t.Errorf("listener called: %s", what)
	case <-time.After(300 * time.Millisecond):
	}
}

func TestListen(t *testing.T) {
	a, u := openFresh(t, Options{})
	b := openURL(t, u, Options{})
	defer b.Close()
	ctx := context.Background()
	l := listen(t, a)
	l.wait(t, "when listening starts")

	// A job created queued by another store wakes the listener.
	if err := b.CreateJobs(ctx, testSource(), &job.Job{ID: "q"}); err != nil {
		t.Fatal(err)
	}
	l.wait(t, "job created queued")

	// A job created held does not; nor do its updates, until it parks.
	if err := b.CreateJobs(ctx, testSource(), &job.Job{ID: "held", Owner: "B", LeaseUntil: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(ctx, &job.Update{JobID: "held", Owner: "B", Progress: &job.Progress{Done: 1}}); err != nil {
		t.Fatal(err)
	}
	l.none(t, "job created running and updated")
	wake := time.Now().Add(time.Hour)
	if err := b.Apply(ctx, &job.Update{JobID: "held", Owner: "B", State: ptr(job.Waiting), WakeAt: &wake, WaitFor: &[]string{"go"}, Release: true}); err != nil {
		t.Fatal(err)
	}
	l.wait(t, "job parked with a wake time")

	if _, err := b.Signal(ctx, &job.Signal{JobID: "held", Name: "go"}); err != nil {
		t.Fatal(err)
	}
	l.wait(t, "job signalled")

	if _, err := b.Request(ctx, "q", job.ActionSuspend, "", time.Now(), func(*job.Job) bool { return false }); err != nil {
		t.Fatal(err)
	}
	l.none(t, "job suspended")
	if _, err := b.SetState(ctx, "q", []job.State{job.Suspended}, job.Queued, time.Now()); err != nil {
		t.Fatal(err)
	}
	l.wait(t, "job resumed")

	// A refused write sends nothing.
	if _, err := b.Signal(ctx, &job.Signal{JobID: "q", Name: "go"}); !errors.Is(err, job.ErrNotWaiting) {
		t.Fatalf("Signal of a queued job: %v", err)
	}
	l.none(t, "refused signal")

	// Another drover schema in the same database does not wake this one.
	x := openURL(t, withPath(t, u, "", "search_path", "drover_other"), Options{})
	defer x.Close()
	if err := x.CreateJobs(ctx, testSource(), &job.Job{ID: "elsewhere"}); err != nil {
		t.Fatal(err)
	}
	l.none(t, "job created in another schema")

	if err := b.Notify(ctx); err != nil {
		t.Fatal(err)
	}
	l.wait(t, "Notify")

	// Closing the store ends Listen.
	a.Close()
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		t.Errorf("Listen still running after Close")
	}
}

// terminate kills the server processes of the connections to the store's
// database whose query matches like, as a restart of the server would.
func terminate(t *testing.T, s *Store, like string) int {
	t.Helper()
	conn := adminConn(t)
	defer conn.Close(context.Background())
	var n int
	err := conn.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid() AND query LIKE $2`, s.cfg.Database, like).Scan(&n)
	if err != nil {
		t.Fatalf("terminate backends: %v", err)
	}
	return n
}

// TestListenReconnect kills the listening connection: Listen connects
// again, tells the caller to look for due jobs, and hears later
// notifications.
func TestListenReconnect(t *testing.T) {
	a, _ := openFresh(t, Options{})
	ctx := context.Background()
	l := listen(t, a)
	l.wait(t, "when listening starts")
	deadline := time.Now().Add(5 * time.Second)
	for terminate(t, a, "LISTEN%") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no listening connection found")
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.wait(t, "after reconnecting")
	if err := a.CreateJobs(ctx, testSource(), &job.Job{ID: "q"}); err != nil {
		t.Fatal(err)
	}
	l.wait(t, "job created after reconnecting")
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://drover:s3cret@db.example:5432/drover?sslmode=require", "postgres://drover:xxxxx@db.example:5432/drover?sslmode=require"},
		{"postgres://drover@db/x", "postgres://drover@db/x"},
		{"postgres://db/x?user=drover&password=s3cret", "postgres://db/x?password=xxxxx&user=drover"},
		{"postgresql://u:p%40ss@h/d", "postgresql://u:xxxxx@h/d"},
		// Does not parse (a bad port; an unescaped space): still redacted.
		{"postgres://u:s3cret@h:port/d", "postgres://u:xxxxx@h:port/d"},
		{"postgres://u:s3 cret@h/d?password=s3 cret", "postgres://u:xxxxx@h/d?password=xxxxx"},
	} {
		if got := Redact(tc.in); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := Redact(tc.in); strings.Contains(got, "s3cret") || strings.Contains(got, "p@ss") || strings.Contains(got, "p%40ss") {
			t.Errorf("Redact(%q) = %q shows the password", tc.in, got)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const pw = "Sup3r-S3cret-pw"
	for _, u := range []string{
		// Nothing listens on port 1.
		"postgres://drover:" + pw + "@127.0.0.1:1/drover?sslmode=disable",
		"postgres://drover@127.0.0.1:1/drover?sslmode=disable&password=" + pw,
		// Does not parse.
		"postgres://drover:" + pw + "@127.0.0.1:notaport/drover",
		"postgres://drover:" + pw + "@127.0.0.1:1/drover?pool_max_conns=many",
	} {
		_, err := OpenOptions(ctx, u, Options{Logger: quiet()})
		if err == nil {
			t.Errorf("Open(%s) succeeded", Redact(u))
			continue
		}
		if strings.Contains(err.Error(), pw) || strings.Contains(fmt.Sprintf("%+v", err), pw) {
			t.Errorf("Open error shows the password: %v", err)
		}
		t.Logf("%v", err)
	}

	// Against the test server, a password and a database that does not
	// exist: with trust authentication any password passes, and the
	// server's error must not bring it back.
	adminConn(t).Close(context.Background())
	u, err := url.Parse(testURL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), pw)
	u.Path = "/drover_no_such_database"
	_, err = OpenOptions(ctx, u.String(), Options{Logger: quiet()})
	if err == nil {
		t.Fatalf("Open of a missing database succeeded")
	}
	if strings.Contains(err.Error(), pw) {
		t.Errorf("Open error shows the password: %v", err)
	}
	t.Logf("%v", err)
}

// TestRedactError covers the errors of a store: any message with the
// password in it has it replaced, and still unwraps to its cause.
func TestRedactError(t *testing.T) {
	s := &Store{secret: passwords("postgres://u:pw%2Fx@h/d")}
	cause := errors.New("boom pw/x and pw%2Fx")
	err := s.redact(fmt.Errorf("wrapped: %w", cause))
	if strings.Contains(err.Error(), "pw/x") || strings.Contains(err.Error(), "pw%2Fx") {
		t.Errorf("redact left the password: %v", err)
	}
	if !errors.Is(err, cause) {
		t.Errorf("redacted error does not unwrap to its cause")
	}
}

// TestConnectionsKilled kills the store's connections over and over while
// jobs are created and journaled, as a server restart does to them:
// every write acknowledged is there afterwards, reads and writes that had
// not committed are retried, and a write whose commit's answer was lost
// fails with ErrOutcomeUnknown.
func TestConnectionsKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	logs := &countingHandler{}
	s, _ := openFresh(t, Options{RetryFor: 20 * time.Second, Logger: slog.New(logs)})
	defer logs.report(t)
	resilience(t, s, func() {
		terminate(t, s, "%")
	}, 150*time.Millisecond, 3*time.Second)
}

// TestServerRestart restarts a PostgreSQL server of the test's own
// (internal/pgtest) while jobs are created and journaled from many
// goroutines, alternately as a crash does (immediate stop, then start)
// and as an administrator does (fast restart): every write acknowledged is
// there afterwards, and the writes caught by a restart either wait for
// the server and commit once, or fail with ErrOutcomeUnknown. The cluster
// test internal/clustertest.TestDatabaseRestart stops the database under
// running servers; this one checks the store's own promises, write by
// write, at a far higher write rate.
func TestServerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	pg := pgtest.New(t, pgtest.Options{})
	t.Setenv("DROVER_TEST_POSTGRES", pg.URL())
	logs := &countingHandler{}
	s, _ := openFresh(t, Options{RetryFor: 60 * time.Second, Logger: slog.New(logs)})
	defer logs.report(t)
	n := 0
	resilience(t, s, func() {
		start := time.Now()
		how := "immediate stop and start"
		if n%2 == 0 {
			pg.Stop()
			pg.Start()
		} else {
			how = "fast restart"
			log := filepath.Join(filepath.Dir(pg.Data()), "log")
			if out, err := pg.Run("pg_ctl", "-D", pg.Data(), "-m", "fast", "-w", "-t", "60", "-l", log, "restart"); err != nil {
				t.Errorf("pg_ctl restart: %v\n%s", err, out)
			}
		}
		n++
		t.Logf("%s took %v", how, time.Since(start))
	}, 2*time.Second, 8*time.Second)
}

// resilience runs one-step jobs from many goroutines for the given time
// while disrupt runs every so often, then checks that every acknowledged
// write is stored.
func resilience(t *testing.T, s *Store, disrupt func(), every, run time.Duration) {
	ctx := context.Background()
	src := testSource()
	if err := s.CreateJobs(ctx, src); err != nil {
		t.Fatal(err)
	}
	var (
		created, completed sync.Map // acknowledged writes
		unknown, okJobs    atomic.Int64
		wg                 sync.WaitGroup
		stop               = make(chan struct{})
	)
	check := func(what string, err error) bool {
		if err == nil {
			return true
		}
		if errors.Is(err, ErrOutcomeUnknown) {
			if unknown.Add(1) <= 3 {
				t.Logf("%s: %v", what, err)
			}
			return false
		}
		t.Errorf("%s: %v", what, err)
		return false
	}
	for w := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%02d-%05d", w, i)
				now := time.Now()
				j := &job.Job{ID: id, Digest: src.Digest, Owner: "engine", LeaseUntil: now.Add(time.Hour)}
				if !check("create "+id, s.CreateJobs(ctx, nil, j)) {
					continue
				}
				created.Store(id, true)
				u := &job.Update{JobID: id, Owner: "engine", State: ptr(job.Completed), Ended: &now, Release: true,
					Steps:   []job.Step{{Key: "1", Activity: "sh", Status: job.StepDone, Result: json.RawMessage(`{"code":0}`), Started: now, Ended: now}},
					Records: []job.Record{{Stream: job.Output, Key: "1/emit/0", Value: json.RawMessage(`"` + id + `"`)}}}
				if !check("apply "+id, s.Apply(ctx, u)) {
					continue
				}
				completed.Store(id, true)
				if _, err := s.Job(ctx, id); err != nil {
					t.Errorf("read %s: %v", id, err)
				}
				okJobs.Add(1)
			}
		})
	}
	kills := 0
	deadline := time.Now().Add(run)
	for time.Now().Before(deadline) {
		time.Sleep(every)
		disrupt()
		kills++
	}
	time.Sleep(every)
	close(stop)
	wg.Wait()

	created.Range(func(k, _ any) bool {
		id := k.(string)
		j, err := s.Job(ctx, id)
		if err != nil {
			t.Errorf("acknowledged job %s: %v", id, err)
			return true
		}
		if _, ok := completed.Load(id); ok {
			recs, err := s.Records(ctx, id, job.Output, 0, 0)
			if j.State != job.Completed || j.Steps != 1 || err != nil || len(recs) != 1 {
				t.Errorf("acknowledged Apply of %s lost: state %s steps %d records %d (%v)", id, j.State, j.Steps, len(recs), err)
			}
		}
		return true
	})
	t.Logf("%d disruptions: %d jobs completed, %d writes with an unknown outcome", kills, okJobs.Load(), unknown.Load())
	if okJobs.Load() == 0 {
		t.Errorf("no job completed")
	}
}

// countingHandler counts the store's log messages, to report how often it
// retried and what it learnt of commits whose answer was lost.
type countingHandler struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *countingHandler) WithGroup(string) slog.Handler            { return h }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[string]int{}
	}
	h.n[r.Message]++
	return nil
}

func (h *countingHandler) report(t *testing.T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for msg, n := range h.n {
		t.Logf("%5d × %s", n, msg)
	}
}

// TestURLParameters checks that pgx's pool settings and server parameters
// in the URL reach the pool and the sessions, and what drover sets when
// the URL does not.
func TestURLParameters(t *testing.T) {
	u := freshDB(t)
	ctx := context.Background()
	s := openURL(t, withPath(t, u, "", "pool_max_conns", "3", "statement_timeout", "1234", "application_name", "fleet-a"), Options{})
	defer s.Close()
	if got := s.pool.Config().MaxConns; got != 3 {
		t.Errorf("MaxConns = %d, want 3", got)
	}
	var timeout, app, path string
	if err := s.pool.QueryRow(ctx, "SELECT current_setting('statement_timeout'), current_setting('application_name'), current_setting('search_path')").Scan(&timeout, &app, &path); err != nil {
		t.Fatal(err)
	}
	if timeout != "1234ms" || app != "fleet-a" || path != `"drover"` {
		t.Errorf("statement_timeout, application_name, search_path = %q, %q, %q; want 1234ms, fleet-a, \"drover\"", timeout, app, path)
	}

	d := openURL(t, u, Options{})
	defer d.Close()
	if got := d.pool.Config().MaxConns; got < int32(d.opt.Writers)+4 {
		t.Errorf("default MaxConns = %d, want room for reads beside %d writers", got, d.opt.Writers)
	}
	if err := d.pool.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&app); err != nil || app != "drover" {
		t.Errorf("default application_name = %q, %v", app, err)
	}
	if d.pool.Config().ConnConfig.ConnectTimeout != defaultConnectTimeout {
		t.Errorf("default ConnectTimeout = %v", d.pool.Config().ConnConfig.ConnectTimeout)
	}
}

// TestDueSkipsLocked holds a queued job's row locked, as another server
// claiming it does: Due leaves it out instead of waiting for it.
func TestDueSkipsLocked(t *testing.T) {
	s, u := openFresh(t, Options{})
	ctx := context.Background()
	base := time.Now().Add(-time.Minute)
	if err := s.CreateJobs(ctx, testSource(), &job.Job{ID: "a", Created: base}, &job.Job{ID: "b", Created: base.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, withPath(t, u, "", "search_path", "drover"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT 1 FROM jobs WHERE id = 'a' FOR NO KEY UPDATE"); err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	due, err := s.Due(dctx, time.Now(), 0)
	if err != nil || strings.Join(due, " ") != "b" {
		t.Errorf("Due with a locked: %q, %v; want b", due, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	due, err = s.Due(ctx, time.Now(), 0)
	if err != nil || strings.Join(due, " ") != "a b" {
		t.Errorf("Due after the lock = %q, %v; want a b", due, err)
	}
}
