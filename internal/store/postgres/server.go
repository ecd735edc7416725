package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/job"
)

// What drover server uses beyond engine.Store: its API tokens, its queue of
// top-level jobs and counts for its metrics.
//
// The store does not offer RecordsSince, the server's read of a job's and
// its children's records in one Seq order: one job's records commit in Seq
// order (every write of them holds the job's row lock), but records of
// different jobs are written by different transactions, which may commit
// out of Seq order, so a follower resuming after the last Seq it saw could
// miss some. Without it the server follows each job's own records.

// DueTopLevel is Due restricted to top-level jobs: a child job is run by
// its parent's drive, never taken up on its own.
func (s *Store) DueTopLevel(ctx context.Context, now time.Time, limit int) ([]string, error) {
	var lim any
	if limit > 0 {
		lim = limit
	}
	const q = `WITH q AS (
			SELECT id, created FROM jobs WHERE state = 'queued' AND parent_id IS NULL AND (owner = '' OR lease_until < $1)
			ORDER BY created, id LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED
		), w AS (
			SELECT id, created FROM jobs WHERE state = 'waiting' AND wake_at IS NOT NULL AND wake_at <= $1 AND parent_id IS NULL
			AND (owner = '' OR lease_until < $1)
			ORDER BY created, id LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED
		)
		SELECT id FROM (SELECT id, created FROM q UNION ALL SELECT id, created FROM w) d ORDER BY created, id LIMIT $2`
	var ids []string
	err := s.read(ctx, "list due jobs", func(ctx context.Context, qr querier) (err error) {
		ids, err = collect(ctx, qr, func(sc scanner) (id string, err error) {
			return id, sc.Scan(&id)
		}, q, now, lim)
		return err
	})
	return ids, err
}

// CountJobs counts jobs by their state at now (a running job whose lease
// expired counts as interrupted): every job, or only top-level ones.
func (s *Store) CountJobs(ctx context.Context, now time.Time, topLevel bool) (map[job.State]int, error) {
	q := `SELECT CASE WHEN state = 'running' AND lease_until < $1 THEN 'interrupted' ELSE state END AS st, count(*) FROM jobs`
	if topLevel {
		q += " WHERE parent_id IS NULL"
	}
	q += " GROUP BY st"
	type count struct {
		st string
		n  int
	}
	var counts []count
	err := s.read(ctx, "count jobs", func(ctx context.Context, qr querier) (err error) {
		counts, err = collect(ctx, qr, func(sc scanner) (c count, err error) {
			return c, sc.Scan(&c.st, &c.n)
		}, q, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make(map[job.State]int, len(counts))
	for _, c := range counts {
		out[job.State(c.st)] = c.n
	}
	return out, nil
}

const tokenColumns = `name, role, hash, created, last_used`

func scanToken(sc scanner) (*auth.Token, error) {
	var (
		t        auth.Token
		role     string
		lastUsed *time.Time
	)
	if err := sc.Scan(&t.Name, &role, &t.Hash, &t.Created, &lastUsed); err != nil {
		return nil, err
	}
	t.Role, t.LastUsed = auth.Role(role), fromPtr(lastUsed)
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
	// ON CONFLICT makes a taken name an answer rather than an error that
	// would fail the batch the insert shares.
	const ins = `INSERT INTO tokens (` + tokenColumns + `) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`
	return s.write(ctx, &request{
		op: "create token " + t.Name,
		build: func(b *pgx.Batch, _ time.Time) {
			b.Queue(ins, clean(t.Name), string(t.Role), t.Hash, t.Created, ts(t.LastUsed))
		},
		read: func(br pgx.BatchResults) error {
			tag, err := br.Exec()
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return fail(fmt.Errorf("create token %s: %w", t.Name, auth.ErrExists))
			}
			return nil
		},
	})
}

// TokenByHash returns the token whose secret hashes to hash, or
// job.ErrNotFound.
func (s *Store) TokenByHash(ctx context.Context, hash string) (*auth.Token, error) {
	var t *auth.Token
	err := s.read(ctx, "read token", func(ctx context.Context, q querier) (err error) {
		t, err = scanToken(q.QueryRow(ctx, "SELECT "+tokenColumns+" FROM tokens WHERE hash = $1", hash))
		if errors.Is(err, pgx.ErrNoRows) {
			return fail(fmt.Errorf("token: %w", job.ErrNotFound))
		}
		return err
	})
	return t, err
}

// Tokens lists the tokens by name.
func (s *Store) Tokens(ctx context.Context) ([]*auth.Token, error) {
	var ts []*auth.Token
	err := s.read(ctx, "list tokens", func(ctx context.Context, q querier) (err error) {
		ts, err = collect(ctx, q, scanToken, "SELECT "+tokenColumns+" FROM tokens ORDER BY name")
		return err
	})
	return ts, err
}

// DeleteToken removes a token: requests with it fail from then on.
func (s *Store) DeleteToken(ctx context.Context, name string) error {
	return s.write(ctx, &request{
		op:    "delete token " + name,
		build: func(b *pgx.Batch, _ time.Time) { b.Queue("DELETE FROM tokens WHERE name = $1", name) },
		read: func(br pgx.BatchResults) error {
			tag, err := br.Exec()
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return fail(fmt.Errorf("token %s: %w", name, job.ErrNotFound))
			}
			return nil
		},
	})
}

// TouchToken records when a token was last used.
func (s *Store) TouchToken(ctx context.Context, name string, at time.Time) error {
	return s.write(ctx, &request{
		op: "touch token " + name,
		build: func(b *pgx.Batch, _ time.Time) {
			b.Queue("UPDATE tokens SET last_used = $2 WHERE name = $1", name, ts(at))
		},
		read: func(br pgx.BatchResults) error {
			_, err := br.Exec()
			return err
		},
	})
}

// ClaimDue claims up to limit due jobs for owner until the given time, in
// one statement: the jobs Due would list at now (only top-level ones with
// topLevel), and the running jobs of other engines whose lease expired
// (their engine died), oldest first, locked FOR NO KEY UPDATE SKIP LOCKED
// and given the lease in the same transaction. Expired leases are taken
// over only once the database has been reachable from this store for
// twice the lease (until - now) since the last outage it saw: a lease
// that lapsed because its holder could not reach the database either is
// the holder's to renew when it is back, not another's to take. Servers calling it at once get
// disjoint jobs, where Due followed by Claim lists them the same jobs to
// race for, one commit per claim. It is an optional capability, for an
// engine that knows to use it; the jobs come back as Claim returns them,
// oldest first.
func (s *Store) ClaimDue(ctx context.Context, owner string, until, now time.Time, limit int, topLevel bool) ([]*job.Job, error) {
	if owner == "" {
		return nil, errors.New("claim due jobs: no owner given")
	}
	if limit <= 0 {
		return nil, errors.New("claim due jobs: no limit given")
	}
	top := ""
	if topLevel {
		top = " AND parent_id IS NULL"
	}
	q := `WITH q AS (
			SELECT id, created FROM jobs WHERE state = 'queued'` + top + ` AND (owner = '' OR lease_until < $3)
			ORDER BY created, id LIMIT $4 FOR NO KEY UPDATE SKIP LOCKED
		), w AS (
			SELECT id, created FROM jobs WHERE state = 'waiting' AND wake_at IS NOT NULL AND wake_at <= $3` + top + `
			AND (owner = '' OR lease_until < $3)
			ORDER BY created, id LIMIT $4 FOR NO KEY UPDATE SKIP LOCKED
		), o AS (
			SELECT id, created FROM jobs WHERE state = 'running' AND $5 AND lease_until < $3 AND owner <> $1
			AND owner NOT LIKE '%:script'` + top + `
			ORDER BY created, id LIMIT $4 FOR NO KEY UPDATE SKIP LOCKED
		), d AS (
			SELECT id FROM (SELECT id, created FROM q UNION ALL SELECT id, created FROM w UNION ALL SELECT id, created FROM o) d
			ORDER BY created, id LIMIT $4
		)
		UPDATE jobs SET state = 'running', owner = $1, lease_until = $2, runs = runs + 1,
			started = coalesce(started, $3), ended = NULL, request = '', updated = $3
		WHERE id IN (SELECT id FROM d)
		RETURNING ` + jobColumns
	// Running jobs whose lease expired are a dead engine's, taken over;
	// but not a job held by its script between drover step blocks (an
	// owner ending in ":script"): a script does not renew, and only
	// drover resume runs it again.
	takeOver := time.Since(s.ReachableSince()) >= 2*until.Sub(now)
	var out []*job.Job
	err := s.write(ctx, &request{
		op:    "claim due jobs for " + owner,
		build: func(b *pgx.Batch, _ time.Time) { b.Queue(q, owner, ts(until), now, limit, takeOver) },
		read: func(br pgx.BatchResults) (err error) {
			out, err = collectBatch(br, scanJob)
			return err
		},
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b *job.Job) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}
