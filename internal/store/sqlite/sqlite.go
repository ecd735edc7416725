// Package sqlite is drover's default store: one SQLite file, embedded
// through modernc.org/sqlite so that the binary stays static.
//
// Every write goes through one writer goroutine that owns one connection.
// It takes all the write requests waiting, runs them in one transaction and
// commits once, so that many concurrent jobs share one fsync (group
// commit). A write that finds nothing queued and the writer idle runs on
// its caller's goroutine instead, under the same lock. Reads use a pool of other connections, which WAL lets run while
// the writer writes.
package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

var _ engine.Store = (*Store)(nil)

// Options tune OpenOptions. The zero value is what drover uses.
type Options struct {
	// BusyTimeout is how long a statement waits for a lock another process
	// holds before failing with job.ErrStoreLocked. Zero means 30s: many
	// drover processes sharing one file queue for its lock, and one may
	// wait behind many others.
	BusyTimeout time.Duration
	// ReadOnly opens the file read-only: the file must exist with the
	// current schema, and every write fails with job.ErrReadOnly.
	ReadOnly bool
	// MaxBatch caps how many write requests share one transaction. Zero
	// means 256.
	MaxBatch int
	// Readers is the size of the read connection pool. Zero means 8.
	Readers int
}

const (
	defaultBusyTimeout = 30 * time.Second
	defaultMaxBatch    = 256
	defaultReaders     = 8
)

// Store is a drover store in one SQLite file. It is safe for concurrent use.
type Store struct {
	path string
	opt  Options

	wdb *sql.DB // holds the writer's single connection
	rdb *sql.DB // read pool
	r   *readStmts

	// mu orders submissions against Close, so that nothing is sent on
	// reqs once it is closed.
	mu     sync.RWMutex
	closed bool
	reqs   chan *request
	done   chan struct{} // closed when the writer has drained reqs
	wErr   error         // the writer's close error, valid after done

	// wmu is held while a batch runs on w: by the writer goroutine, or by
	// a caller that found it idle (see write).
	wmu sync.Mutex
	w   *writer
}

// Open opens the store at path, creating the file and its directory if
// missing and migrating the schema to this binary's version.
func Open(ctx context.Context, path string) (*Store, error) {
	return OpenOptions(ctx, path, Options{})
}

// OpenOptions is Open with options.
func OpenOptions(ctx context.Context, path string, opt Options) (*Store, error) {
	if opt.BusyTimeout <= 0 {
		opt.BusyTimeout = defaultBusyTimeout
	}
	if opt.MaxBatch <= 0 {
		opt.MaxBatch = defaultMaxBatch
	}
	if opt.Readers <= 0 {
		opt.Readers = defaultReaders
	}
	if path == "" {
		return nil, errors.New("open store: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{path: abs, opt: opt}
	if !opt.ReadOnly {
		if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
			if errors.Is(err, os.ErrPermission) || isReadOnlyFS(err) {
				return nil, fmt.Errorf("%s: %w: cannot create its directory (%v); point --db at a writable location", abs, job.ErrReadOnly, err)
			}
			return nil, fmt.Errorf("open store %s: create directory: %w", abs, err)
		}
	} else if _, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("open store %s read-only: %w", abs, err)
	}

	// SQLite commits with fsync(2) unless told otherwise; fdatasync(2) gives
	// the same durability (it flushes the size when the file grew) without
	// forcing a file system journal commit for the modification time, and
	// the commit is most of the cost of a write. The switch is process-wide
	// and idempotent; it fails only where SQLite never uses fdatasync.
	_, _ = sqlite.Fdatasync(true)

	wc, err := sqlite.NewConnector(s.dsn(false))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	s.wdb = sql.OpenDB(persistWAL{wc})
	// One connection: the writer's. Open's own statements use it before
	// the writer starts.
	s.wdb.SetMaxOpenConns(1)
	s.wdb.SetMaxIdleConns(1)
	s.wdb.SetConnMaxLifetime(0)
	s.wdb.SetConnMaxIdleTime(0)

	conn, err := s.wdb.Conn(ctx)
	if err != nil {
		s.wdb.Close()
		return nil, s.openErr(err)
	}
	w, err := s.prepare(ctx, conn)
	if err != nil {
		conn.Close()
		s.wdb.Close()
		return nil, err
	}

	rc, err := sqlite.NewConnector(s.dsn(true))
	if err != nil {
		w.close()
		s.wdb.Close()
		return nil, fmt.Errorf("open store %s: %w", abs, err)
	}
	s.rdb = sql.OpenDB(persistWAL{rc})
	s.rdb.SetMaxOpenConns(opt.Readers)
	s.rdb.SetMaxIdleConns(opt.Readers)
	s.rdb.SetConnMaxLifetime(0)
	s.rdb.SetConnMaxIdleTime(0)
	if s.r, err = prepareReads(ctx, s.rdb); err != nil {
		s.rdb.Close()
		w.close()
		s.wdb.Close()
		return nil, s.openErr(err)
	}

	// The queue holds one full batch beyond the one being written, so that
	// callers rarely block on the send.
	s.reqs = make(chan *request, opt.MaxBatch)
	s.done = make(chan struct{})
	s.w = w
	go s.writeLoop(w)
	return s, nil
}

// dsn is the connection string of a writer or reader connection. The path
// goes through a file: URI so that SQLite's own mode parameter applies and
// names with '?' or '#' survive.
func (s *Store) dsn(reader bool) string {
	u := url.URL{Scheme: "file", Path: s.path}
	q := url.Values{}
	if s.opt.ReadOnly {
		q.Set("mode", "ro")
	} else {
		q.Set("mode", "rwc")
	}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", s.opt.BusyTimeout.Milliseconds()))
	if reader {
		// A reader never writes; query_only turns a bug into an error
		// instead of a write outside the writer's transactions.
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "foreign_keys(1)")
		// FULL: every commit is synced, so an acknowledged write survives
		// power loss (NORMAL in WAL mode may lose the last commits).
		q.Add("_pragma", "synchronous(FULL)")
	}
	// url.Values encodes the parentheses, which SQLite's URI parser and
	// the driver both decode.
	return u.String() + "?" + q.Encode()
}

// persistWAL opens connections that leave the -wal and -shm files in
// place when the last one closes, instead of deleting them.
//
// A new WAL file grows with every commit, and syncing a file that grew
// also commits its size to the file system journal: on ext4 that makes a
// commit cost about twice what it costs once SQLite rewrites a WAL it has
// already grown. Without this every process (every drover run) would
// start over with an empty WAL. Keeping the files also lets a user who
// may not write the store's directory still read it.
type persistWAL struct{ driver.Connector }

func (p persistWAL) Connect(ctx context.Context) (driver.Conn, error) {
	c, err := p.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	if fc, ok := c.(sqlite.FileControl); ok {
		if _, err := fc.FileControlPersistWAL("main", 1); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Path is the store's file.
func (s *Store) Path() string { return s.path }

// Close waits for the pending writes to commit and closes the store. It is
// safe to call more than once.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.done
		return nil
	}
	s.closed = true
	close(s.reqs)
	s.mu.Unlock()
	<-s.done
	s.r.close()
	return errors.Join(s.wErr, s.rdb.Close(), s.wdb.Close())
}

// errClosed is returned by writes after Close.
var errClosed = errors.New("store is closed")

// isReadOnlyFS reports whether err is EROFS.
func isReadOnlyFS(err error) bool {
	return errors.Is(err, syscall.EROFS)
}

// sqliteCode returns the primary SQLite result code of err, or 0.
func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() & 0xff
	}
	return 0
}

// storeErr turns the SQLite errors users can act on into drover's typed
// errors, naming the file and what to do. Others pass through wrapped.
func (s *Store) storeErr(op string, err error) error {
	if err == nil {
		return nil
	}
	switch sqliteCode(err) {
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return fmt.Errorf("%s %s: %w: another process held it for more than %v (%v); stop the other drover using this file, or use PostgreSQL to share a store between servers",
			op, s.path, job.ErrStoreLocked, s.opt.BusyTimeout, err)
	case sqlite3.SQLITE_READONLY:
		if c := extendedCode(err); c == sqlite3.SQLITE_READONLY_DIRECTORY || c == sqlite3.SQLITE_READONLY_CANTINIT {
			// Reading a WAL database needs its -shm file: SQLite cannot
			// read the store when that file is missing and cannot be
			// created.
			return fmt.Errorf("%s %s: %w: it cannot even be read, because SQLite must create %s-shm beside it and its directory is not writable (%v); make the directory writable by this user, or copy the store somewhere writable",
				op, s.path, job.ErrReadOnly, filepath.Base(s.path), err)
		}
		if s.opt.ReadOnly {
			return fmt.Errorf("%s %s: %w: it was opened read-only", op, s.path, job.ErrReadOnly)
		}
		return fmt.Errorf("%s %s: %w (%v); make the file and its directory writable by this user, or point --db at a writable file",
			op, s.path, job.ErrReadOnly, err)
	case sqlite3.SQLITE_CANTOPEN:
		if !s.writable() {
			return fmt.Errorf("%s %s: %w: cannot open it or create its -wal and -shm files (%v); make the file and its directory writable by this user, or point --db at a writable file",
				op, s.path, job.ErrReadOnly, err)
		}
	case sqlite3.SQLITE_NOTADB:
		return fmt.Errorf("%s is %w (it is not an SQLite database: %v); point --db at a drover store or a new file",
			s.path, job.ErrNotAStore, err)
	}
	return fmt.Errorf("%s %s: %w", op, s.path, err)
}

// openErr maps an error met while opening.
func (s *Store) openErr(err error) error {
	return s.storeErr("open store", err)
}

// writable reports whether this process may write the file (or create it)
// and create files beside it, which WAL needs.
func (s *Store) writable() bool {
	dir := filepath.Dir(s.path)
	f, err := os.CreateTemp(dir, ".drover-probe-*")
	if err != nil {
		return false
	}
	name := f.Name()
	f.Close()
	os.Remove(name)
	if _, err := os.Stat(s.path); err != nil {
		return true
	}
	wf, err := os.OpenFile(s.path, os.O_WRONLY, 0)
	if err != nil {
		return false
	}
	wf.Close()
	return true
}
