// Package postgres is drover's store on PostgreSQL, for several servers
// sharing the work (SPEC section 7). It passes the same contract as the
// SQLite store (internal/store/storetest).
//
// # Writes
//
// Writes are group-committed the way the SQLite store does it: every write
// is a request that one of a few writer goroutines takes together with all
// the others waiting, and runs in one transaction with one commit. Each
// request is a fixed list of statements whose conditions are in the SQL
// (an Apply's inserts join its fenced UPDATE of the job), so the writer
// needs no answer from the server between them, and a request that is
// refused (a lost lease, a job that is not waiting) has written nothing:
// the writer sends BEGIN, all the statements of the batch and COMMIT in
// one pipeline, one round trip, and then reads the answers. A statement
// that fails with an error aborts the transaction, and the server skips
// the rest, COMMIT included; the writer then runs every request of the
// batch alone, so that a bad request fails by itself. Request, whose held callback must see the stored row, runs as
// its own transaction on the pool. (BenchmarkOneStepJobs compares this
// with a transaction per write on a pool of connections, which leaves the
// grouping to PostgreSQL's own group commit: batching does 2 to 3 times
// as many jobs per second.)
//
// # A database that goes away
//
// Nothing is acknowledged before its COMMIT is: a write returns nil only
// once the server confirmed the commit. When the connection fails, a write
// is retried with backoff (for Options.RetryFor) only when it certainly did
// not commit: no connection could be had, or nothing was sent, or the
// server answered a statement before COMMIT with an error or with the
// notice that it is ending the session (answers come in order, so it ran
// nothing after), or it answered COMMIT with an error that means a
// rollback. When the answers are lost, the outcome is not guessed: the
// store asks the server, once it is back, whether the transaction
// committed (txid_status, with the id each transaction reads at its
// start, or asked of its backend if that answer was lost too), and either
// returns the results it had read or runs the write again. A request
// whose own answer was lost in a transaction that committed fails with
// ErrOutcomeUnknown, as does a write when the server cannot tell within
// RetryFor, or has crashed since and may have given the transaction's id
// to another (see txStatus): running it again could apply it twice.
// Reads are idempotent and retried on any connection failure, for the
// same time. Open does not retry: a wrong URL fails at once.
//
// # Schema
//
// drover's tables live in a schema of their own, "drover" unless the URL's
// search_path names another first (postgres://...?search_path=drover_x), so
// that a database shared with other applications is fine to use. The
// schema is versioned by embedded migrations that Open applies under a
// transaction-level advisory lock, so that servers starting together do
// not race.
//
// # Notifications
//
// A write that makes a job due (created queued, signalled, resumed, queued
// or parked with a wake time by its engine) sends NOTIFY drover_due in its
// transaction, so that it is delivered when, and only if, it commits.
// Listen calls a function on each one, so that servers wake without
// polling alone.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/drover/drover/internal/engine"
)

var _ engine.Store = (*Store)(nil)

// Options tune OpenOptions. The zero value is what drover uses.
type Options struct {
	// NoMigrate opens without checking or migrating the schema, for
	// `drover db status` and `drover db migrate`, which call SchemaVersion
	// and Migrate themselves.
	NoMigrate bool
	// MaxBatch caps how many write requests share one transaction. Zero
	// means 256.
	MaxBatch int
	// Writers is how many transactions of batched writes run at once, each
	// on its own connection. Zero means 2: while one batch waits for its
	// commit to be flushed the next one runs its statements.
	Writers int
	// RetryFor is how long a call waits for the database to come back
	// before failing. Zero means 30s; negative means no retries.
	RetryFor time.Duration
	// WriteTimeout bounds one write transaction, so that a server that
	// stopped answering without closing the connection fails the writes
	// instead of holding them forever. Zero means 1m.
	WriteTimeout time.Duration
	// Logger gets the store's warnings (lost connections, retries). Nil
	// means slog.Default().
	Logger *slog.Logger
}

const (
	defaultMaxBatch       = 256
	defaultWriters        = 2
	defaultRetryFor       = 30 * time.Second
	defaultWriteTimeout   = time.Minute
	defaultConnectTimeout = 10 * time.Second
	defaultSchema         = "drover"
	applicationName       = "drover"

	// notifyChannel is the channel of NOTIFY drover_due. Its payload is
	// the schema, so that drover installations sharing a database in
	// different schemas do not wake each other.
	notifyChannel = "drover_due"
)

// ErrOutcomeUnknown is wrapped by a write whose connection was lost after
// its COMMIT was sent and before the server confirmed it, when the server
// could not be asked afterwards whether it committed: it may or may not
// have been stored. It is not retried, since that could apply it twice.
var ErrOutcomeUnknown = errors.New("the connection to PostgreSQL was lost while committing; the write may or may not have been stored")

// Store is a drover store in a PostgreSQL database. It is safe for
// concurrent use.
type Store struct {
	name   string // the redacted URL, for messages
	schema string
	opt    Options
	log    *slog.Logger
	pool   *pgxpool.Pool
	cfg    *pgx.ConnConfig // for Listen's dedicated connections
	secret []string        // strings never to show in a message

	// mu orders submissions against Close, so that nothing is sent on
	// reqs once it is closed.
	mu      sync.RWMutex
	closed  bool
	reqs    chan *request
	writers sync.WaitGroup
	stop    chan struct{} // closed by Close: ends Listen loops and reads' retries

	health health

	// opening turns retries off while Open runs: a URL that leads nowhere
	// should fail at once, not after RetryFor. Only Open writes it, before
	// the store is shared.
	opening bool

	// ending holds the pool's connections whose server said in a notice
	// that it is ending their session (the WARNING of an immediate
	// shutdown or a crash, which is no error): the answers read before it
	// are all the session ran. See tryTx.
	ending sync.Map // *pgconn.PgConn -> struct{}

	// applySQL caches Apply's statement text by the set of fields it sets.
	applySQL sync.Map // applyMask -> string
	// sources holds the digests of the sources this store has seen
	// committed. Sources are immutable and never deleted, so CreateJobs
	// need not send one again: most calls are jobs of a source stored
	// long ago, and its files are the largest value a job write carries.
	sources sync.Map // digest -> struct{}
}

// Open opens the store at a postgres:// (or postgresql://) URL and migrates
// its schema to this binary's version. The URL is what pgx accepts: sslmode
// and the other libpq parameters, pool_max_conns and the other pool
// settings, and any server parameter such as statement_timeout or
// search_path.
func Open(ctx context.Context, url string) (*Store, error) {
	return OpenOptions(ctx, url, Options{})
}

// OpenOptions is Open with options.
func OpenOptions(ctx context.Context, rawURL string, opt Options) (*Store, error) {
	if opt.MaxBatch <= 0 {
		opt.MaxBatch = defaultMaxBatch
	}
	if opt.Writers <= 0 {
		opt.Writers = defaultWriters
	}
	if opt.RetryFor == 0 {
		opt.RetryFor = defaultRetryFor
	}
	if opt.WriteTimeout <= 0 {
		opt.WriteTimeout = defaultWriteTimeout
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	s := &Store{name: Redact(rawURL), opt: opt, secret: passwords(rawURL)}
	s.log = opt.Logger.With("store", s.name)
	if !strings.HasPrefix(rawURL, "postgres://") && !strings.HasPrefix(rawURL, "postgresql://") {
		return nil, fmt.Errorf("open store %s: not a postgres:// URL", s.name)
	}
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, s.redact(fmt.Errorf("open store %s: %w", s.name, err))
	}
	if p := cfg.ConnConfig.Password; p != "" {
		// The password may also come from PGPASSWORD or a passfile.
		s.secret = append(s.secret, p)
	}
	if err := s.configure(rawURL, cfg); err != nil {
		return nil, err
	}
	s.cfg = cfg.ConnConfig.Copy()
	cfg.ConnConfig.OnNotice = func(pc *pgconn.PgConn, n *pgconn.Notice) {
		if strings.HasPrefix(n.Code, "57P") {
			s.ending.Store(pc, struct{}{})
		}
	}
	cfg.BeforeClose = func(c *pgx.Conn) { s.ending.Delete(c.PgConn()) }
	s.pool, err = pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, s.redact(fmt.Errorf("open store %s: %w", s.name, err))
	}
	if !opt.NoMigrate {
		s.opening = true
		err := s.Migrate(ctx)
		s.opening = false
		if err != nil {
			s.pool.Close()
			return nil, err
		}
	}
	s.reqs = make(chan *request, opt.MaxBatch)
	s.stop = make(chan struct{})
	for range opt.Writers {
		s.writers.Go(s.writeLoop)
	}
	return s, nil
}

// configure sets what drover needs of every connection: its schema first
// in the search path, a name in pg_stat_activity, a bound on connecting.
func (s *Store) configure(rawURL string, cfg *pgxpool.Config) error {
	rp := cfg.ConnConfig.RuntimeParams
	if sp, ok := rp["search_path"]; ok && strings.TrimSpace(sp) != "" {
		first, _, _ := strings.Cut(sp, ",")
		first = strings.TrimSpace(first)
		if strings.HasPrefix(first, `"`) && strings.HasSuffix(first, `"`) && len(first) >= 2 {
			first = strings.ReplaceAll(first[1:len(first)-1], `""`, `"`)
		} else {
			first = strings.ToLower(first)
		}
		if first == "" || strings.HasPrefix(first, "$") {
			return fmt.Errorf("open store %s: search_path %q must name drover's schema first", s.name, sp)
		}
		s.schema = first
	} else {
		s.schema = defaultSchema
		rp["search_path"] = pgx.Identifier{defaultSchema}.Sanitize()
	}
	if _, ok := rp["application_name"]; !ok {
		rp["application_name"] = applicationName
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return s.redact(fmt.Errorf("open store %s: %w", s.name, err))
	}
	// Without a bound, connecting to a host that drops packets waits for
	// the kernel's TCP timeout, minutes. connect_timeout in the URL wins.
	if !u.Query().Has("connect_timeout") {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	// pgx's default pool, max(4, CPUs), would leave reads few connections
	// beside the writers'. pool_max_conns in the URL wins.
	if !u.Query().Has("pool_max_conns") {
		cfg.MaxConns = max(cfg.MaxConns, int32(s.opt.Writers)+6)
	}
	return nil
}

// Name is the store's URL without its password.
func (s *Store) Name() string { return s.name }

// Schema is the PostgreSQL schema that holds drover's tables.
func (s *Store) Schema() string { return s.schema }

// Close waits for the pending writes to commit and closes the store. It is
// safe to call more than once.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.writers.Wait()
		return nil
	}
	s.closed = true
	close(s.reqs)
	close(s.stop)
	s.mu.Unlock()
	s.writers.Wait()
	s.pool.Close()
	return nil
}

// errClosed is returned by calls after Close.
var errClosed = errors.New("store is closed")

// Redact returns a postgres:// URL with its password, in the user
// information or in a password parameter, replaced by xxxxx. A URL that
// does not parse has whatever looks like a password replaced.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		out := userinfoPassword.ReplaceAllString(rawURL, "${1}xxxxx@")
		return passwordParam.ReplaceAllString(out, "${1}xxxxx")
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	// url.URL.String escapes the redaction marker's neighbours as needed.
	return u.String()
}

var (
	// userinfoPassword matches scheme://user:password@ up to the last @
	// before the path, since an unescaped @ in a password breaks parsing.
	userinfoPassword = regexp.MustCompile(`^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?#]*:)[^/?#]*@`)
	passwordParam    = regexp.MustCompile(`([?&]password=)[^&#]*`)
)

// passwords returns what in rawURL is a password, as written and decoded,
// so that messages can be searched for both.
func passwords(rawURL string) []string {
	var out []string
	add := func(p string) {
		if p == "" {
			return
		}
		out = append(out, p)
		if d, err := url.PathUnescape(p); err == nil && d != p {
			out = append(out, d)
		}
		if d, err := url.QueryUnescape(p); err == nil && d != p {
			out = append(out, d)
		}
	}
	if m := userinfoPassword.FindString(rawURL); m != "" {
		_, rest, _ := strings.Cut(m[strings.Index(m, "://")+3:], ":")
		add(strings.TrimSuffix(rest, "@"))
	}
	for _, m := range passwordParam.FindAllString(rawURL, -1) {
		_, v, _ := strings.Cut(m, "=")
		add(v)
	}
	if u, err := url.Parse(rawURL); err == nil {
		if p, ok := u.User.Password(); ok {
			add(p)
		}
		add(u.Query().Get("password"))
	}
	return out
}

// redactedError is an error whose message had a password taken out. It
// unwraps to the original, so that errors.Is still finds drover's
// sentinels and context errors.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redact takes the store's passwords out of err's message. Every error
// that can carry a driver's text goes through it before leaving the
// package.
func (s *Store) redact(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	out := msg
	for _, p := range s.secret {
		out = strings.ReplaceAll(out, p, "xxxxx")
	}
	if out == msg {
		return err
	}
	return &redactedError{msg: out, err: err}
}

// dbErr wraps an error of the database with what was being done and the
// store, and redacts it.
func (s *Store) dbErr(op string, err error) error {
	return s.redact(fmt.Errorf("%s (store %s): %w", op, s.name, err))
}

// pgCode is err's SQLSTATE, "" when the server did not send one.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// pgError is the server's error in err's chain, or nil.
func pgError(err error) *pgconn.PgError {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe
	}
	return nil
}

// constraint is the constraint a PostgreSQL error names, if any.
func constraint(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.ConstraintName
	}
	return ""
}

// retryableCode reports whether a server error means the transaction was
// rolled back for a reason that may pass: a conflict with another
// transaction, or a server shutting down, starting or out of connections.
func retryableCode(code string) bool {
	switch {
	case code == "":
		return false
	case strings.HasPrefix(code, "08"): // connection exception
		return true
	case code == "40001", code == "40P01": // serialization failure, deadlock
		return true
	case code == "57P01", code == "57P02", code == "57P03": // admin/crash shutdown, cannot connect now
		return true
	case code == "53300": // too many connections
		return true
	}
	return false
}

// connectRetryable reports whether a failure to connect may pass: the
// server is unreachable, starting, shutting down or out of connections. A
// refusal (a wrong password, no such database) will not.
func connectRetryable(err error) bool {
	if code := pgCode(err); code != "" {
		return retryableCode(code)
	}
	return !errors.Is(err, context.Canceled)
}

// backoff sleeps before attempt n (from 1) of a retry, returning false if
// ctx ended or stop closed first.
func backoff(ctx context.Context, n int, stop <-chan struct{}) bool {
	d := 50 * time.Millisecond << min(n-1, 6)
	d = min(d, 2*time.Second)
	// Jitter spreads the reconnections of several servers.
	d += rand.N(d / 4)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}
