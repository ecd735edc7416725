package sqlite

import (
	"context"
	"time"

	"github.com/drover/drover/internal/job"
)

// Reads drover server uses beyond engine.Store: its queue of top-level
// jobs, counts for its metrics, and one query for a job's (and its
// children's) records in both streams, for followers.

// DueTopLevel is Due restricted to top-level jobs: a child job is run by
// its parent's drive, never taken up on its own.
func (s *Store) DueTopLevel(ctx context.Context, now time.Time, limit int) ([]string, error) {
	if limit <= 0 {
		limit = -1
	}
	rows, err := s.rdb.QueryContext(ctx, `SELECT id FROM (
			SELECT id, created FROM (SELECT id, created FROM jobs INDEXED BY jobs_queued_top
				WHERE state = 'queued' AND parent_id IS NULL AND (owner = '' OR lease_until < ?1)
				ORDER BY created, id LIMIT ?2)
			UNION ALL
			SELECT id, created FROM (SELECT id, created FROM jobs INDEXED BY jobs_wake
				WHERE state = 'waiting' AND wake_at > 0 AND wake_at <= ?1 AND parent_id IS NULL
				AND (owner = '' OR lease_until < ?1) ORDER BY created, id LIMIT ?2))
		ORDER BY created, id LIMIT ?2`, now.UnixNano(), limit)
	if err != nil {
		return nil, s.readErr("list due jobs", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, s.readErr("list due jobs", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("list due jobs", err)
	}
	return ids, nil
}

// CountJobs counts jobs by their state at now (a running job whose lease
// expired counts as interrupted): every job, or only top-level ones.
func (s *Store) CountJobs(ctx context.Context, now time.Time, topLevel bool) (map[job.State]int, error) {
	q := `SELECT CASE WHEN state = 'running' AND lease_until > 0 AND lease_until < ? THEN 'interrupted' ELSE state END AS st,
		count(*) FROM jobs`
	if topLevel {
		q += " WHERE parent_id IS NULL"
	}
	q += " GROUP BY st"
	rows, err := s.rdb.QueryContext(ctx, q, now.UnixNano())
	if err != nil {
		return nil, s.readErr("count jobs", err)
	}
	defer rows.Close()
	counts := make(map[job.State]int)
	for rows.Next() {
		var (
			st string
			n  int
		)
		if err := rows.Scan(&st, &n); err != nil {
			return nil, s.readErr("count jobs", err)
		}
		counts[job.State(st)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("count jobs", err)
	}
	return counts, nil
}

// RecordsSince returns the records of both streams of a job (and, with
// family, of its children) with Seq greater than after, in Seq order, at
// most limit (no limit when limit <= 0). Seq is global and a commit makes
// its records visible at once in Seq order, so a follower that resumes
// after the last Seq it saw misses nothing.
func (s *Store) RecordsSince(ctx context.Context, jobID string, family bool, after int64, limit int) ([]job.Record, error) {
	if limit <= 0 {
		limit = -1
	}
	// One indexed range per stream (records_follow), merged.
	q := "SELECT * FROM (SELECT * FROM (SELECT " + recordColumns + ` FROM records WHERE job_id = ?1 AND stream = 'output' AND seq > ?2
		ORDER BY seq LIMIT ?3) UNION ALL SELECT * FROM (SELECT ` + recordColumns + ` FROM records WHERE job_id = ?1 AND stream = 'log'
		AND seq > ?2 ORDER BY seq LIMIT ?3)) ORDER BY seq LIMIT ?3`
	if family {
		q = "SELECT " + recordColumns + ` FROM records WHERE seq > ?2 AND (job_id = ?1 OR job_id IN
			(SELECT id FROM jobs WHERE parent_id = ?1)) ORDER BY seq LIMIT ?3`
	}
	rows, err := s.rdb.QueryContext(ctx, q, jobID, after, limit)
	if err != nil {
		return nil, s.readErr("read records of "+jobID, err)
	}
	defer rows.Close()
	var recs []job.Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, s.readErr("read records of "+jobID, err)
		}
		recs = append(recs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("read records of "+jobID, err)
	}
	return recs, nil
}

// LastSeq is the Seq of a job's last record (and, with family, of its
// children's), 0 when it has none: where a follower that wants only what
// comes next starts.
func (s *Store) LastSeq(ctx context.Context, jobID string, family bool) (int64, error) {
	q := `SELECT max(coalesce((SELECT max(seq) FROM records WHERE job_id = ?1 AND stream = 'output'), 0),
		coalesce((SELECT max(seq) FROM records WHERE job_id = ?1 AND stream = 'log'), 0))`
	if family {
		q = `SELECT coalesce(max(seq), 0) FROM records WHERE job_id = ?1 OR job_id IN (SELECT id FROM jobs WHERE parent_id = ?1)`
	}
	var n int64
	if err := s.rdb.QueryRowContext(ctx, q, jobID).Scan(&n); err != nil {
		return 0, s.readErr("read records of "+jobID, err)
	}
	return n, nil
}
