package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/drover/drover/internal/job"
)

// migrationFiles are the schema's migrations, applied in the order of
// their number prefix: migrations/0001_init.sql is version 1.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// versionTable records the schema version in drover's schema. Its
// presence is what makes a schema a drover store.
const versionTable = "drover_schema"

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

// querier is a pooled connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SchemaVersion returns the version of the schema in the database (0 when
// drover's schema has no tables yet) and the latest this binary knows. It
// does not change anything, for `drover db status`.
func (s *Store) SchemaVersion(ctx context.Context) (current, latest int, err error) {
	ms, err := migrations()
	if err != nil {
		return 0, 0, fmt.Errorf("schema version of %s: %w", s.name, err)
	}
	err = s.read(ctx, "read schema version", func(ctx context.Context, q querier) error {
		current, err = s.schemaVersion(ctx, q)
		return err
	})
	return current, len(ms), err
}

// schemaVersion reads the version table, 0 when there is none.
func (s *Store) schemaVersion(ctx context.Context, q querier) (int, error) {
	var exists bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2)`, s.schema, versionTable).Scan(&exists)
	if err != nil || !exists {
		return 0, err
	}
	var v int
	err = q.QueryRow(ctx, "SELECT version FROM "+pgx.Identifier{s.schema, versionTable}.Sanitize()).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("schema %s of %s is %w (its %s table is empty); point the URL's search_path at another schema",
			s.schema, s.name, job.ErrNotAStore, versionTable)
	}
	return v, err
}

func (s *Store) checkNewer(v, latest int) error {
	if v > latest {
		return fmt.Errorf("%s: %w: its schema %s is at version %d and this drover knows versions up to %d; upgrade drover",
			s.name, job.ErrSchemaNewer, s.schema, v, latest)
	}
	return nil
}

// lockKey is the advisory lock that migrations of this schema take: one
// per schema, so that drover installations in other schemas of the same
// database do not wait for each other.
func (s *Store) lockKey() int64 {
	h := fnv.New64a()
	h.Write([]byte("drover migrate " + s.schema))
	return int64(h.Sum64())
}

// Migrate brings the schema to this binary's version, creating drover's
// schema and tables in a new database. A database already at the version
// is only read. Migrations run in one transaction that first takes a
// transaction-level advisory lock, so that servers starting at once
// migrate one after the other and the later ones find the work done; a
// failed migration leaves nothing behind.
func (s *Store) Migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return fmt.Errorf("migrate %s: %w", s.name, err)
	}
	latest := len(ms)
	var v int
	err = s.read(ctx, "read schema version", func(ctx context.Context, q querier) error {
		v, err = s.schemaVersion(ctx, q)
		return err
	})
	if err != nil {
		return err
	}
	if err := s.checkNewer(v, latest); err != nil {
		return err
	}
	if v == latest {
		return nil
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return s.dbErr("migrate", err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", s.lockKey()); err != nil {
		return s.dbErr("migrate: take the migration lock", err)
	}
	// Another server may have migrated while this one waited for the lock.
	if v, err = s.schemaVersion(ctx, tx); err != nil {
		return s.dbErr("migrate", err)
	}
	if err := s.checkNewer(v, latest); err != nil {
		return err
	}
	if v == latest {
		return nil
	}
	if v == 0 {
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)", s.schema).Scan(&exists); err != nil {
			return s.dbErr("migrate", err)
		}
		// CREATE SCHEMA IF NOT EXISTS would need the right to create
		// schemas even when an administrator made this one beforehand.
		if !exists {
			if _, err := tx.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{s.schema}.Sanitize()); err != nil {
				return s.dbErr("migrate: create schema "+s.schema, err)
			}
		}
		vt := pgx.Identifier{s.schema, versionTable}.Sanitize()
		if _, err := tx.Exec(ctx, "CREATE TABLE "+vt+" (version integer NOT NULL)"); err != nil {
			return s.dbErr("migrate", err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO "+vt+" (version) VALUES (0)"); err != nil {
			return s.dbErr("migrate", err)
		}
	}
	for _, m := range ms[v:] {
		// No arguments: pgx sends the file in the simple protocol, which
		// runs its several statements.
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			if pgCode(err) == "42P07" { // duplicate_table
				return s.redact(fmt.Errorf("migrate %s to version %d: schema %s already has a table of that name that is not drover's (%w); point the URL's search_path at another schema",
					s.name, m.version, s.schema, err))
			}
			return s.dbErr(fmt.Sprintf("migrate to version %d (%s)", m.version, m.name), err)
		}
		if _, err := tx.Exec(ctx, "UPDATE "+pgx.Identifier{s.schema, versionTable}.Sanitize()+" SET version = $1", m.version); err != nil {
			return s.dbErr("migrate", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return s.dbErr("migrate: commit", err)
	}
	s.log.Info("migrated the store's schema", "schema", s.schema, "from", v, "to", latest)
	return nil
}
