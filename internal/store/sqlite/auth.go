package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/job"
)

// The API tokens of drover server. Only their hashes are stored.

const tokenColumns = `name, role, hash, created, last_used`

func scanToken(sc scanner) (*auth.Token, error) {
	var (
		t                 auth.Token
		role              string
		created, lastUsed int64
	)
	if err := sc.Scan(&t.Name, &role, &t.Hash, &created, &lastUsed); err != nil {
		return nil, err
	}
	t.Role, t.Created, t.LastUsed = auth.Role(role), fromNanos(created), fromNanos(lastUsed)
	return &t, nil
}

// CreateToken stores a new token. A token of the same name fails with
// auth.ErrExists.
func (s *Store) CreateToken(ctx context.Context, t *auth.Token) error {
	if t.Name == "" || t.Hash == "" || t.Role == "" {
		return errors.New("create token: name, role and hash are required")
	}
	if t.Created.IsZero() {
		t.Created = time.Now()
	}
	return s.write(ctx, func(w *writer) error {
		_, err := w.conn.ExecContext(w.ctx, "INSERT INTO tokens ("+tokenColumns+") VALUES (?, ?, ?, ?, ?)",
			t.Name, string(t.Role), t.Hash, nanos(t.Created), nanos(t.LastUsed))
		if err != nil {
			if c := extendedCode(err); c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || c == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
				return fmt.Errorf("create token %s: %w", t.Name, auth.ErrExists)
			}
			return fmt.Errorf("create token %s: %w", t.Name, err)
		}
		return nil
	})
}

// TokenByHash returns the token whose secret hashes to hash, or
// job.ErrNotFound.
func (s *Store) TokenByHash(ctx context.Context, hash string) (*auth.Token, error) {
	t, err := scanToken(s.rdb.QueryRowContext(ctx, "SELECT "+tokenColumns+" FROM tokens WHERE hash = ?", hash))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("token: %w", job.ErrNotFound)
	}
	if err != nil {
		return nil, s.readErr("read token", err)
	}
	return t, nil
}

// Tokens lists the tokens by name.
func (s *Store) Tokens(ctx context.Context) ([]*auth.Token, error) {
	rows, err := s.rdb.QueryContext(ctx, "SELECT "+tokenColumns+" FROM tokens ORDER BY name")
	if err != nil {
		return nil, s.readErr("list tokens", err)
	}
	defer rows.Close()
	var ts []*auth.Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, s.readErr("list tokens", err)
		}
		ts = append(ts, t)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("list tokens", err)
	}
	return ts, nil
}

// DeleteToken removes a token: requests with it fail from then on.
func (s *Store) DeleteToken(ctx context.Context, name string) error {
	return s.write(ctx, func(w *writer) error {
		res, err := w.conn.ExecContext(w.ctx, "DELETE FROM tokens WHERE name = ?", name)
		if err != nil {
			return fmt.Errorf("delete token %s: %w", name, err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return fmt.Errorf("token %s: %w", name, job.ErrNotFound)
		}
		return nil
	})
}

// TouchToken records when a token was last used.
func (s *Store) TouchToken(ctx context.Context, name string, at time.Time) error {
	return s.write(ctx, func(w *writer) error {
		if _, err := w.conn.ExecContext(w.ctx, "UPDATE tokens SET last_used = ? WHERE name = ?", nanos(at), name); err != nil {
			return fmt.Errorf("touch token %s: %w", name, err)
		}
		return nil
	})
}
