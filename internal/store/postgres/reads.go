package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover/drover/internal/job"
)

// read runs fn on a pooled connection. Reads change nothing, so a read
// whose connection failed runs again, with backoff, until the database is
// back or RetryFor has passed. fn returns answers (job.ErrNotFound) through
// fail; other errors are the database's and get op and the store added.
func (s *Store) read(ctx context.Context, op string, fn func(ctx context.Context, q querier) error) error {
	deadline := time.Now().Add(s.opt.RetryFor)
	for attempt := 1; ; attempt++ {
		if s.isClosed() {
			return fmt.Errorf("%s (store %s): %w", op, s.name, errClosed)
		}
		err, retry := s.readOnce(ctx, fn)
		if a, ok := answer(err); ok {
			s.reachable()
			return a
		}
		if err == nil {
			s.reachable()
			return nil
		}
		if retry {
			s.failed(op, attempt, err)
		}
		if !retry || ctx.Err() != nil || s.opening || s.opt.RetryFor < 0 || time.Now().After(deadline) {
			return s.dbErr(op, err)
		}
		if !backoff(ctx, attempt, s.stop) {
			return s.dbErr(op, err)
		}
	}
}

func (s *Store) readOnce(ctx context.Context, fn func(ctx context.Context, q querier) error) (err error, retry bool) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err), ctx.Err() == nil && connectRetryable(err)
	}
	defer conn.Release()
	err = fn(ctx, conn)
	if err == nil {
		return nil, false
	}
	if _, ok := answer(err); ok {
		return err, false
	}
	return err, ctx.Err() == nil && lost(conn, err)
}

// collect reads every row of a query with scan.
func collect[T any](ctx context.Context, q querier, scan func(scanner) (T, error), sql string, args ...any) ([]T, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Job returns one job.
func (s *Store) Job(ctx context.Context, id string) (*job.Job, error) {
	var j *job.Job
	err := s.read(ctx, "read job "+id, func(ctx context.Context, q querier) (err error) {
		j, err = s.loadJob(ctx, q, id)
		return err
	})
	return j, err
}

func (s *Store) loadJob(ctx context.Context, q querier, id string) (*job.Job, error) {
	j, err := scanJob(q.QueryRow(ctx, "SELECT "+jobColumns+" FROM jobs WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fail(fmt.Errorf("job %s: %w", id, job.ErrNotFound))
	}
	return j, err
}

// Jobs lists jobs, oldest first. In f.States, Interrupted selects running
// jobs whose lease has expired at now and Running the others.
func (s *Store) Jobs(ctx context.Context, f job.Filter, now time.Time) ([]*job.Job, error) {
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if len(f.States) > 0 {
		var (
			ors   []string
			plain []string
		)
		for _, st := range f.States {
			switch st {
			case job.Interrupted:
				ors = append(ors, "(state = 'running' AND lease_until < "+arg(now)+")")
			case job.Running:
				ors = append(ors, "(state = 'running' AND (lease_until IS NULL OR lease_until >= "+arg(now)+"))")
			default:
				plain = append(plain, string(st))
			}
		}
		if len(plain) > 0 {
			ors = append(ors, "state = ANY("+arg(plain)+"::text[])")
		}
		where = append(where, "("+strings.Join(ors, " OR ")+")")
	}
	if f.TopLevel {
		where = append(where, "parent_id IS NULL")
	}
	if f.ParentID != "" {
		where = append(where, "parent_id = "+arg(f.ParentID))
	}
	if f.CreatedBy != "" {
		where = append(where, "created_by = "+arg(f.CreatedBy))
	}
	var jobs []*job.Job
	err := s.read(ctx, "list jobs", func(ctx context.Context, qr querier) error {
		where, args := where[:len(where):len(where)], args[:len(args):len(args)]
		if f.AfterID != "" {
			var created time.Time
			err := qr.QueryRow(ctx, "SELECT created FROM jobs WHERE id = $1", f.AfterID).Scan(&created)
			switch {
			case err == nil:
				where = append(where, fmt.Sprintf("(created, id) > ($%d, $%d)", len(args)+1, len(args)+2))
				args = append(args, created, f.AfterID)
			case errors.Is(err, pgx.ErrNoRows):
				// The page's last job was deleted meanwhile; ids sort in
				// creation order, so they still say where the page ended.
				where = append(where, fmt.Sprintf("id > $%d", len(args)+1))
				args = append(args, f.AfterID)
			default:
				return err
			}
		}
		q := "SELECT " + jobColumns + " FROM jobs"
		if len(where) > 0 {
			q += " WHERE " + strings.Join(where, " AND ")
		}
		q += " ORDER BY created, id"
		if f.Limit > 0 {
			q += fmt.Sprintf(" LIMIT $%d", len(args)+1)
			args = append(args, f.Limit)
		}
		var err error
		jobs, err = collect(ctx, qr, scanJob, q, args...)
		return err
	})
	return jobs, err
}

// CountChildren counts a parent's children by their state at now, a
// running child with an expired lease counting as interrupted.
func (s *Store) CountChildren(ctx context.Context, parentID string, now time.Time) (map[job.State]int, error) {
	type count struct {
		st string
		n  int
	}
	var counts []count
	err := s.read(ctx, "count children of "+parentID, func(ctx context.Context, q querier) (err error) {
		counts, err = collect(ctx, q, func(sc scanner) (c count, err error) {
			return c, sc.Scan(&c.st, &c.n)
		}, `SELECT CASE WHEN state = 'running' AND lease_until < $1 THEN 'interrupted' ELSE state END AS st, count(*)
			FROM jobs WHERE parent_id = $2 GROUP BY st`, now, parentID)
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

// Source returns a stored source by digest.
func (s *Store) Source(ctx context.Context, digest string) (*job.Source, error) {
	src := &job.Source{Digest: digest}
	var files []byte
	err := s.read(ctx, "read source "+digest, func(ctx context.Context, q querier) error {
		err := q.QueryRow(ctx, "SELECT entry, files FROM sources WHERE digest = $1", digest).Scan(&src.Entry, &files)
		if errors.Is(err, pgx.ErrNoRows) {
			return fail(fmt.Errorf("source %s: %w", digest, job.ErrNotFound))
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(files, &src.Files); err != nil {
		return nil, fmt.Errorf("read source %s: files: %w", digest, err)
	}
	return src, nil
}

// Journal returns a job's steps in the order they were first journaled.
// A job without steps, or an unknown job, has an empty journal.
func (s *Store) Journal(ctx context.Context, jobID string) ([]job.Step, error) {
	var steps []job.Step
	err := s.read(ctx, "read journal of "+jobID, func(ctx context.Context, q querier) (err error) {
		steps, err = collect(ctx, q, scanStep, "SELECT "+stepColumns+" FROM steps WHERE job_id = $1 ORDER BY id", jobID)
		return err
	})
	return steps, err
}

// Records returns a stream's records with Seq greater than after, at most
// limit of them (no limit when limit <= 0).
func (s *Store) Records(ctx context.Context, jobID string, st job.Stream, after int64, limit int) ([]job.Record, error) {
	var lim any
	if limit > 0 {
		lim = limit
	}
	var recs []job.Record
	err := s.read(ctx, "read "+string(st)+" of "+jobID, func(ctx context.Context, q querier) (err error) {
		recs, err = collect(ctx, q, scanRecord, "SELECT "+recordColumns+` FROM records
			WHERE job_id = $1 AND stream = $2 AND seq > $3 ORDER BY seq LIMIT $4`, jobID, string(st), after, lim)
		return err
	})
	return recs, err
}

// Signals returns a job's undelivered signals, oldest first.
func (s *Store) Signals(ctx context.Context, jobID string) ([]job.Signal, error) {
	var sigs []job.Signal
	err := s.read(ctx, "read signals of "+jobID, func(ctx context.Context, q querier) (err error) {
		sigs, err = collect(ctx, q, scanSignal, "SELECT "+signalColumns+" FROM signals WHERE job_id = $1 ORDER BY id", jobID)
		return err
	})
	return sigs, err
}

// Due lists the jobs an engine should take up at now: queued jobs and
// waiting jobs whose wake time has come, that no live engine holds,
// oldest first. limit <= 0 means no limit.
//
// The rows are read FOR NO KEY UPDATE SKIP LOCKED: a job whose row another
// transaction has locked, which is another server claiming it at this
// moment, is left out rather than waited for, so that servers polling at
// once spread over the due jobs. The locks last only for the statement;
// Claim's compare-and-set is what gives a job to one engine. NO KEY is
// the weaker lock that claims also take: it does not block the foreign key
// checks of rows being inserted for the job (steps, records, children).
func (s *Store) Due(ctx context.Context, now time.Time, limit int) ([]string, error) {
	var lim any
	if limit > 0 {
		lim = limit
	}
	var ids []string
	err := s.read(ctx, "list due jobs", func(ctx context.Context, q querier) (err error) {
		ids, err = collect(ctx, q, func(sc scanner) (id string, err error) {
			return id, sc.Scan(&id)
		}, dueQuery, now, lim)
		return err
	})
	return ids, err
}

// dueQuery is Due's statement. Its two halves each use their own index
// (jobs_state for the queued, jobs_wake for the waiting) and are merged in
// order: one scan of both states ordered by creation would walk past every
// ended job older than the first due one. Locking clauses are not allowed
// beside UNION, hence the CTEs.
const dueQuery = `WITH q AS (
		SELECT id, created FROM jobs WHERE state = 'queued' AND (owner = '' OR lease_until < $1)
		ORDER BY created, id LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED
	), w AS (
		SELECT id, created FROM jobs WHERE state = 'waiting' AND wake_at IS NOT NULL AND wake_at <= $1 AND (owner = '' OR lease_until < $1)
		ORDER BY created, id LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED
	)
	SELECT id FROM (SELECT id, created FROM q UNION ALL SELECT id, created FROM w) d ORDER BY created, id LIMIT $2`

// NextWake is the earliest wake time of a waiting job, zero if none.
func (s *Store) NextWake(ctx context.Context) (time.Time, error) {
	var t *time.Time
	err := s.read(ctx, "read next wake time", func(ctx context.Context, q querier) error {
		return q.QueryRow(ctx, "SELECT min(wake_at) FROM jobs WHERE state = 'waiting' AND wake_at IS NOT NULL").Scan(&t)
	})
	return fromPtr(t), err
}

// Workflow returns a registered workflow.
func (s *Store) Workflow(ctx context.Context, name string) (*job.Workflow, error) {
	var w *job.Workflow
	err := s.read(ctx, "read workflow "+name, func(ctx context.Context, q querier) (err error) {
		w, err = scanWorkflow(q.QueryRow(ctx, "SELECT "+workflowColumns+" FROM workflows WHERE name = $1", name))
		if errors.Is(err, pgx.ErrNoRows) {
			return fail(fmt.Errorf("workflow %s: %w", name, job.ErrNotFound))
		}
		return err
	})
	return w, err
}

// Workflows lists the registered workflows by name.
func (s *Store) Workflows(ctx context.Context) ([]*job.Workflow, error) {
	var ws []*job.Workflow
	err := s.read(ctx, "list workflows", func(ctx context.Context, q querier) (err error) {
		ws, err = collect(ctx, q, scanWorkflow, "SELECT "+workflowColumns+" FROM workflows ORDER BY name")
		return err
	})
	return ws, err
}
