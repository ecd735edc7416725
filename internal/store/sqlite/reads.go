package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/drover/drover/internal/job"
)

// readStmts are the read pool's statements; database/sql prepares each on
// a connection the first time it runs there and keeps it.
type readStmts struct {
	job, jobCreated, source, journal, records, signals *sql.Stmt
	dueQueued, dueWaiting, nextWake, countChildren     *sql.Stmt
	workflow, workflows                                *sql.Stmt
}

func prepareReads(ctx context.Context, db *sql.DB) (*readStmts, error) {
	r := &readStmts{}
	stmts := []struct {
		p *(*sql.Stmt)
		q string
	}{
		{&r.job, "SELECT " + jobColumns + " FROM jobs WHERE id = ?"},
		{&r.jobCreated, "SELECT created FROM jobs WHERE id = ?"},
		{&r.source, "SELECT entry, files FROM sources WHERE digest = ?"},
		{&r.journal, "SELECT " + stepColumns + " FROM steps WHERE job_id = ? ORDER BY id"},
		{&r.records, "SELECT " + recordColumns + " FROM records WHERE job_id = ? AND stream = ? AND seq > ? ORDER BY seq LIMIT ?"},
		{&r.signals, "SELECT " + signalColumns + " FROM signals WHERE job_id = ? ORDER BY id"},
		// Due's two halves each use their own index; Due merges them.
		{&r.dueQueued, `SELECT id, created FROM jobs WHERE state = 'queued' AND (owner = '' OR lease_until < ?1)
			ORDER BY created, id LIMIT ?2`},
		// Without statistics the planner would walk every waiting job
		// through jobs_state; the wake index goes straight to those due.
		{&r.dueWaiting, `SELECT id, created FROM jobs INDEXED BY jobs_wake WHERE state = 'waiting' AND wake_at > 0 AND wake_at <= ?1
			AND (owner = '' OR lease_until < ?1) ORDER BY created, id LIMIT ?2`},
		{&r.nextWake, "SELECT coalesce(min(wake_at), 0) FROM jobs INDEXED BY jobs_wake WHERE state = 'waiting' AND wake_at > 0"},
		{&r.countChildren, `SELECT CASE WHEN state = 'running' AND lease_until > 0 AND lease_until < ? THEN 'interrupted' ELSE state END AS st,
			count(*) FROM jobs WHERE parent_id = ? GROUP BY st`},
		{&r.workflow, "SELECT " + workflowColumns + " FROM workflows WHERE name = ?"},
		{&r.workflows, "SELECT " + workflowColumns + " FROM workflows ORDER BY name"},
	}
	for _, st := range stmts {
		p, err := db.PrepareContext(ctx, st.q)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("prepare %q: %w", firstLine(st.q), err)
		}
		*st.p = p
	}
	return r, nil
}

func (r *readStmts) close() {
	for _, st := range []*sql.Stmt{r.job, r.jobCreated, r.source, r.journal, r.records, r.signals,
		r.dueQueued, r.dueWaiting, r.nextWake, r.countChildren, r.workflow, r.workflows} {
		if st != nil {
			st.Close()
		}
	}
}

// readErr maps an error of a read.
func (s *Store) readErr(op string, err error) error {
	if sqliteCode(err) != 0 {
		return s.storeErr(op, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Job returns one job.
func (s *Store) Job(ctx context.Context, id string) (*job.Job, error) {
	j, err := scanJob(s.r.job.QueryRowContext(ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("job %s: %w", id, job.ErrNotFound)
	}
	if err != nil {
		return nil, s.readErr("read job "+id, err)
	}
	return j, nil
}

// Jobs lists jobs, oldest first. In f.States, Interrupted selects running
// jobs whose lease has expired at now and Running the others.
func (s *Store) Jobs(ctx context.Context, f job.Filter, now time.Time) ([]*job.Job, error) {
	var (
		where []string
		args  []any
	)
	if len(f.States) > 0 {
		var (
			ors, plain []string
			plainArgs  []any
		)
		for _, st := range f.States {
			switch st {
			case job.Interrupted:
				ors = append(ors, "(state = 'running' AND lease_until > 0 AND lease_until < ?)")
				args = append(args, now.UnixNano())
			case job.Running:
				ors = append(ors, "(state = 'running' AND (lease_until = 0 OR lease_until >= ?))")
				args = append(args, now.UnixNano())
			default:
				plain = append(plain, "?")
				plainArgs = append(plainArgs, string(st))
			}
		}
		if len(plain) > 0 {
			ors = append(ors, "state IN ("+strings.Join(plain, ", ")+")")
			args = append(args, plainArgs...)
		}
		where = append(where, "("+strings.Join(ors, " OR ")+")")
	}
	if f.TopLevel {
		where = append(where, "parent_id IS NULL")
	}
	if f.ParentID != "" {
		where = append(where, "parent_id = ?")
		args = append(args, f.ParentID)
	}
	if f.CreatedBy != "" {
		where = append(where, "created_by = ?")
		args = append(args, f.CreatedBy)
	}
	if f.AfterID != "" {
		var created int64
		err := s.r.jobCreated.QueryRowContext(ctx, f.AfterID).Scan(&created)
		switch {
		case err == nil:
			where = append(where, "(created, id) > (?, ?)")
			args = append(args, created, f.AfterID)
		case errors.Is(err, sql.ErrNoRows):
			// The page's last job was deleted meanwhile; ids sort in
			// creation order, so they still say where the page ended.
			where = append(where, "id > ?")
			args = append(args, f.AfterID)
		default:
			return nil, s.readErr("list jobs", err)
		}
	}
	q := "SELECT " + jobColumns + " FROM jobs"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY created, id"
	if f.Limit > 0 {
		q += " LIMIT ?"
		args = append(args, f.Limit)
	}
	rows, err := s.rdb.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, s.readErr("list jobs", err)
	}
	defer rows.Close()
	var jobs []*job.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, s.readErr("list jobs", err)
		}
		jobs = append(jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("list jobs", err)
	}
	return jobs, nil
}

// CountChildren counts a parent's children by their state at now, a
// running child with an expired lease counting as interrupted.
func (s *Store) CountChildren(ctx context.Context, parentID string, now time.Time) (map[job.State]int, error) {
	rows, err := s.r.countChildren.QueryContext(ctx, now.UnixNano(), parentID)
	if err != nil {
		return nil, s.readErr("count children of "+parentID, err)
	}
	defer rows.Close()
	counts := make(map[job.State]int)
	for rows.Next() {
		var (
			st string
			n  int
		)
		if err := rows.Scan(&st, &n); err != nil {
			return nil, s.readErr("count children of "+parentID, err)
		}
		counts[job.State(st)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("count children of "+parentID, err)
	}
	return counts, nil
}

// Source returns a stored source by digest.
func (s *Store) Source(ctx context.Context, digest string) (*job.Source, error) {
	src := &job.Source{Digest: digest}
	var files []byte
	err := s.r.source.QueryRowContext(ctx, digest).Scan(&src.Entry, &files)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("source %s: %w", digest, job.ErrNotFound)
	}
	if err != nil {
		return nil, s.readErr("read source "+digest, err)
	}
	if err := json.Unmarshal(files, &src.Files); err != nil {
		return nil, fmt.Errorf("read source %s: files: %w", digest, err)
	}
	return src, nil
}

// Journal returns a job's steps in the order they were first journaled.
// A job without steps, or an unknown job, has an empty journal.
func (s *Store) Journal(ctx context.Context, jobID string) ([]job.Step, error) {
	rows, err := s.r.journal.QueryContext(ctx, jobID)
	if err != nil {
		return nil, s.readErr("read journal of "+jobID, err)
	}
	defer rows.Close()
	var steps []job.Step
	for rows.Next() {
		st, err := scanStep(rows)
		if err != nil {
			return nil, s.readErr("read journal of "+jobID, err)
		}
		steps = append(steps, st)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("read journal of "+jobID, err)
	}
	return steps, nil
}

// Records returns a stream's records with Seq greater than after, at most
// limit of them (no limit when limit <= 0).
func (s *Store) Records(ctx context.Context, jobID string, st job.Stream, after int64, limit int) ([]job.Record, error) {
	if limit <= 0 {
		limit = -1
	}
	rows, err := s.r.records.QueryContext(ctx, jobID, string(st), after, limit)
	if err != nil {
		return nil, s.readErr("read "+string(st)+" of "+jobID, err)
	}
	defer rows.Close()
	var recs []job.Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, s.readErr("read "+string(st)+" of "+jobID, err)
		}
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("read "+string(st)+" of "+jobID, err)
	}
	return recs, nil
}

// Signals returns a job's undelivered signals, oldest first.
func (s *Store) Signals(ctx context.Context, jobID string) ([]job.Signal, error) {
	rows, err := s.r.signals.QueryContext(ctx, jobID)
	if err != nil {
		return nil, s.readErr("read signals of "+jobID, err)
	}
	defer rows.Close()
	var sigs []job.Signal
	for rows.Next() {
		sg, err := scanSignal(rows)
		if err != nil {
			return nil, s.readErr("read signals of "+jobID, err)
		}
		sigs = append(sigs, sg)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("read signals of "+jobID, err)
	}
	return sigs, nil
}

// Due lists the jobs an engine should take up at now: queued jobs and
// waiting jobs whose wake time has come, that no live engine holds,
// oldest first. limit <= 0 means no limit.
func (s *Store) Due(ctx context.Context, now time.Time, limit int) ([]string, error) {
	if limit <= 0 {
		limit = -1
	}
	type due struct {
		id      string
		created int64
	}
	var halves [2][]due
	for i, st := range []*sql.Stmt{s.r.dueQueued, s.r.dueWaiting} {
		rows, err := st.QueryContext(ctx, now.UnixNano(), limit)
		if err != nil {
			return nil, s.readErr("list due jobs", err)
		}
		for rows.Next() {
			var d due
			if err := rows.Scan(&d.id, &d.created); err != nil {
				rows.Close()
				return nil, s.readErr("list due jobs", err)
			}
			halves[i] = append(halves[i], d)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, s.readErr("list due jobs", err)
		}
	}
	// Both halves are sorted by (created, id): merge them.
	q, w := halves[0], halves[1]
	ids := make([]string, 0, len(q)+len(w))
	for (len(q) > 0 || len(w) > 0) && (limit < 0 || len(ids) < limit) {
		if len(w) == 0 || (len(q) > 0 && (q[0].created < w[0].created || (q[0].created == w[0].created && q[0].id < w[0].id))) {
			ids, q = append(ids, q[0].id), q[1:]
		} else {
			ids, w = append(ids, w[0].id), w[1:]
		}
	}
	return ids, nil
}

// NextWake is the earliest wake time of a waiting job, zero if none.
func (s *Store) NextWake(ctx context.Context) (time.Time, error) {
	var n int64
	if err := s.r.nextWake.QueryRowContext(ctx).Scan(&n); err != nil {
		return time.Time{}, s.readErr("read next wake time", err)
	}
	return fromNanos(n), nil
}

// Workflow returns a registered workflow.
func (s *Store) Workflow(ctx context.Context, name string) (*job.Workflow, error) {
	w, err := scanWorkflow(s.r.workflow.QueryRowContext(ctx, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("workflow %s: %w", name, job.ErrNotFound)
	}
	if err != nil {
		return nil, s.readErr("read workflow "+name, err)
	}
	return w, nil
}

// Workflows lists the registered workflows by name.
func (s *Store) Workflows(ctx context.Context) ([]*job.Workflow, error) {
	rows, err := s.r.workflows.QueryContext(ctx)
	if err != nil {
		return nil, s.readErr("list workflows", err)
	}
	defer rows.Close()
	var ws []*job.Workflow
	for rows.Next() {
		w, err := scanWorkflow(rows)
		if err != nil {
			return nil, s.readErr("list workflows", err)
		}
		ws = append(ws, w)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("list workflows", err)
	}
	return ws, nil
}
