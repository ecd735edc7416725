package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

	"github.com/drover/drover/internal/job"
)

// migrationFiles are the schema's migrations, applied in the order of
// their number prefix: migrations/0001_init.sql is version 1.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// schemaTable records the schema version. Its presence is what makes a
// SQLite file a drover store.
const schemaTable = "drover_schema"

type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in order, checking that they
// are numbered 1, 2, 3... without gaps.
func migrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		num, _, ok := strings.Cut(name, "_")
		if !ok || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("migration %s: want NNNN_name.sql", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil {
			return nil, fmt.Errorf("migration %s: %w", name, err)
		}
		b, err := fs.ReadFile(migrationFiles, path.Join("migrations", name))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: name, sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %d", m.name, i+1)
		}
	}
	return ms, nil
}

// queryer is what schema inspection needs of a connection.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// schemaVersion returns the file's drover schema version, 0 for a file
// without any table (a new store). A file with other tables and no drover
// schema is not a store: migrating it would mix drover's tables into
// somebody else's database.
func (s *Store) schemaVersion(ctx context.Context, q queryer) (int, error) {
	rows, err := q.QueryContext(ctx, `SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY name`)
	if err != nil {
		return 0, s.openErr(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return 0, s.openErr(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, s.openErr(err)
	}
	if len(tables) == 0 {
		return 0, nil
	}
	found := false
	for _, t := range tables {
		if t == schemaTable {
			found = true
		}
	}
	if !found {
		shown := tables
		if len(shown) > 3 {
			shown = append(shown[:3:3], "...")
		}
		return 0, fmt.Errorf("%s is %w (it is an SQLite database with other tables: %s); point --db at a drover store or a new file",
			s.path, job.ErrNotAStore, strings.Join(shown, ", "))
	}
	var v int
	if err := q.QueryRowContext(ctx, "SELECT version FROM "+schemaTable).Scan(&v); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return 0, fmt.Errorf("%s is %w (its %s table is empty); point --db at a drover store or a new file",
				s.path, job.ErrNotAStore, schemaTable)
		}
		return 0, s.openErr(err)
	}
	return v, nil
}

// migrate checks the file and brings its schema to this binary's version.
// A store already at the current version is not written to, so that a
// read-only store can still be opened and read.
func (s *Store) migrate(ctx context.Context, conn *sql.Conn) error {
	ms, err := migrations()
	if err != nil {
		return fmt.Errorf("open store %s: %w", s.path, err)
	}
	latest := len(ms)

	// Reading the journal mode reads the file's header: this is where a
	// file that is not SQLite fails.
	var mode string
	if err := s.retryBusy(ctx, func() error {
		return conn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode)
	}); err != nil {
		return s.openErr(err)
	}
	var v int
	if err := s.retryBusy(ctx, func() error {
		var err error
		v, err = s.schemaVersion(ctx, conn)
		return err
	}); err != nil {
		return err
	}
	if err := s.checkNewer(v, latest); err != nil {
		return err
	}
	if s.opt.ReadOnly {
		if v < latest {
			return fmt.Errorf("open store %s read-only: its schema is version %d and this drover needs %d; open it once writable to migrate it",
				s.path, v, latest)
		}
		return nil
	}
	if !strings.EqualFold(mode, "wal") {
		// WAL lets readers run while the writer writes, and makes a commit
		// one append and one sync. The mode is stored in the file: this
		// happens once per store.
		// Switching the mode needs an exclusive lock, and SQLite does not
		// call its busy handler for it: retry while another process (a
		// drover opening the same new store) holds the file.
		if err := s.retryBusy(ctx, func() error {
			return conn.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode)
		}); err != nil {
			if sqliteCode(err) != sqlite3.SQLITE_READONLY {
				return s.openErr(err)
			}
			// A read-only file keeps its mode; reads may still work.
		}
	}
	if v == latest {
		return nil
	}

	if err := s.retryBusy(ctx, func() error {
		_, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE")
		return err
	}); err != nil {
		return s.storeErr("migrate store", err)
	}
	if err := s.migrateTx(ctx, conn, ms); err != nil {
		_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		return err
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		return s.storeErr("migrate store", err)
	}
	return nil
}

// migrateTx applies the missing migrations inside the write transaction.
// The version is read again here: another process may have migrated the
// file between the first look and the lock.
func (s *Store) migrateTx(ctx context.Context, conn *sql.Conn, ms []migration) error {
	v, err := s.schemaVersion(ctx, conn)
	if err != nil {
		return err
	}
	if err := s.checkNewer(v, len(ms)); err != nil {
		return err
	}
	if v == 0 {
		if _, err := conn.ExecContext(ctx, "CREATE TABLE "+schemaTable+" (version INTEGER NOT NULL)"); err != nil {
			return s.storeErr("migrate store", err)
		}
		if _, err := conn.ExecContext(ctx, "INSERT INTO "+schemaTable+" (version) VALUES (0)"); err != nil {
			return s.storeErr("migrate store", err)
		}
	}
	for _, m := range ms[v:] {
		if _, err := conn.ExecContext(ctx, m.sql); err != nil {
			return s.storeErr("migrate store ("+m.name+")", err)
		}
		if _, err := conn.ExecContext(ctx, "UPDATE "+schemaTable+" SET version = ?", m.version); err != nil {
			return s.storeErr("migrate store", err)
		}
	}
	return nil
}

func (s *Store) checkNewer(v, latest int) error {
	if v > latest {
		return fmt.Errorf("%s: %w: the store is at schema version %d and this drover knows versions up to %d; upgrade drover",
			s.path, job.ErrSchemaNewer, v, latest)
	}
	return nil
}

// retryBusy runs f again while the file is busy, up to the busy timeout:
// for the statements of opening a store that SQLite's busy handler does
// not cover.
func (s *Store) retryBusy(ctx context.Context, f func() error) error {
	deadline := time.Now().Add(s.opt.BusyTimeout)
	wait := 5 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		code := sqliteCode(err) & 0xff
		if code != sqlite3.SQLITE_BUSY && code != sqlite3.SQLITE_LOCKED {
			return err
		}
		if time.Now().Add(wait).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(wait*2, 100*time.Millisecond)
	}
}

// SchemaVersion returns the store's schema version and the latest this
// binary knows. Open migrates, so they differ only for a store opened
// read-only.
func (s *Store) SchemaVersion(ctx context.Context) (current, latest int, err error) {
	ms, err := migrations()
	if err != nil {
		return 0, 0, err
	}
	v, err := s.schemaVersion(ctx, s.rdb)
	return v, len(ms), err
}

// Migrate brings the schema to this binary's version. Open already did;
// it is here so that every store answers drover db migrate.
func (s *Store) Migrate(ctx context.Context) error { return nil }
