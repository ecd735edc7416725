package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

	"github.com/drover/drover/internal/job"
)

const scheduleColumns = `name, cron, timezone, workflow, params, created_by, created, next_fire, last_fire, last_job, last_error, fires`

// keptFires is how many fire records of a schedule are kept. Only the
// latest matter for the unique key: a fire also needs the schedule's
// next_fire to still be its time, and next_fire only moves forward.
const keptFires = 1000

func scanSchedule(sc scanner) (*job.Schedule, error) {
	var (
		s                           job.Schedule
		params                      []byte
		created, nextFire, lastFire int64
	)
	if err := sc.Scan(&s.Name, &s.Cron, &s.Timezone, &s.Workflow, &params, &s.CreatedBy, &created, &nextFire, &lastFire,
		&s.LastJob, &s.LastError, &s.Fires); err != nil {
		return nil, err
	}
	if len(params) > 0 {
		if err := json.Unmarshal(params, &s.Params); err != nil {
			return nil, fmt.Errorf("schedule %s: its parameters: %w", s.Name, err)
		}
	}
	if s.Params == nil {
		s.Params = []string{}
	}
	s.Created, s.NextFire, s.LastFire = fromNanos(created), fromNanos(nextFire), fromNanos(lastFire)
	return &s, nil
}

// AddSchedule stores a new schedule.
func (s *Store) AddSchedule(ctx context.Context, sc *job.Schedule) error {
	if sc.Name == "" || sc.NextFire.IsZero() {
		return errors.New("add schedule: a schedule needs a name and its next fire time")
	}
	params, err := json.Marshal(sc.Params)
	if err != nil {
		return fmt.Errorf("add schedule %s: %w", sc.Name, err)
	}
	return s.write(ctx, func(w *writer) error {
		_, err := w.conn.ExecContext(w.ctx, "INSERT INTO schedules ("+scheduleColumns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
			sc.Name, sc.Cron, sc.Timezone, sc.Workflow, string(params), sc.CreatedBy, nanos(sc.Created), nanos(sc.NextFire),
			nanos(sc.LastFire), sc.LastJob, sc.LastError, sc.Fires)
		if c := extendedCode(err); c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || c == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
			return fmt.Errorf("schedule %s: %w", sc.Name, job.ErrExists)
		}
		if err != nil {
			return fmt.Errorf("add schedule %s: %w", sc.Name, err)
		}
		return nil
	})
}

// Schedule returns one schedule.
func (s *Store) Schedule(ctx context.Context, name string) (*job.Schedule, error) {
	sc, err := scanSchedule(s.rdb.QueryRowContext(ctx, "SELECT "+scheduleColumns+" FROM schedules WHERE name = ?", name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("schedule %s: %w", name, job.ErrNotFound)
	}
	if err != nil {
		return nil, s.readErr("read schedule "+name, err)
	}
	return sc, nil
}

// Schedules lists the schedules by name.
func (s *Store) Schedules(ctx context.Context) ([]*job.Schedule, error) {
	rows, err := s.rdb.QueryContext(ctx, "SELECT "+scheduleColumns+" FROM schedules ORDER BY name")
	if err != nil {
		return nil, s.readErr("list schedules", err)
	}
	defer rows.Close()
	var out []*job.Schedule
	for rows.Next() {
		sc, err := scanSchedule(rows)
		if err != nil {
			return nil, s.readErr("list schedules", err)
		}
		out = append(out, sc)
	}
	if err := rows.Err(); err != nil {
		return nil, s.readErr("list schedules", err)
	}
	return out, nil
}

// DeleteSchedule removes a schedule and its fire records; the jobs it
// created stay.
func (s *Store) DeleteSchedule(ctx context.Context, name string) error {
	return s.write(ctx, func(w *writer) error {
		res, err := w.conn.ExecContext(w.ctx, "DELETE FROM schedules WHERE name = ?", name)
		if err != nil {
			return fmt.Errorf("delete schedule %s: %w", name, err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return fmt.Errorf("schedule %s: %w", name, job.ErrNotFound)
		}
		if _, err := w.conn.ExecContext(w.ctx, "DELETE FROM schedule_fires WHERE schedule = ?", name); err != nil {
			return fmt.Errorf("delete schedule %s: %w", name, err)
		}
		return nil
	})
}

// FireSchedule commits a fire: the schedule moves on only from f.At, the
// fire's key is new, and the job is created, all in one transaction.
func (s *Store) FireSchedule(ctx context.Context, f *job.Fire) error {
	var (
		srcArgs []any
		jobArgv []any
		jobID   string
	)
	if f.Job != nil {
		if f.Source == nil || f.Source.Digest == "" {
			return fmt.Errorf("fire schedule %s: the job has no sealed source", f.Schedule)
		}
		files, err := json.Marshal(f.Source.Files)
		if err != nil {
			return fmt.Errorf("fire schedule %s: %w", f.Schedule, err)
		}
		srcArgs = []any{f.Source.Digest, f.Source.Entry, string(files)}
		if err := fillJob(f.Job, f.Source, f.Fired); err != nil {
			return err
		}
		if jobArgv, err = jobArgs(f.Job); err != nil {
			return fmt.Errorf("fire schedule %s: %w", f.Schedule, err)
		}
		jobID = f.Job.ID
	}
	fired := func() error {
		return fmt.Errorf("schedule %s at %s: %w", f.Schedule, f.At.UTC().Format(time.RFC3339), job.ErrFired)
	}
	return s.write(ctx, func(w *writer) error {
		res, err := w.conn.ExecContext(w.ctx, `UPDATE schedules SET next_fire = ?, last_fire = ?, last_job = ?, last_error = ?, fires = fires + 1
			WHERE name = ? AND next_fire = ?`, nanos(f.Next), nanos(f.At), jobID, f.Error, f.Schedule, nanos(f.At))
		if err != nil {
			return fmt.Errorf("fire schedule %s: %w", f.Schedule, err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			var one int
			err := w.conn.QueryRowContext(w.ctx, "SELECT 1 FROM schedules WHERE name = ?", f.Schedule).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("schedule %s: %w", f.Schedule, job.ErrNotFound)
			}
			if err != nil {
				return fmt.Errorf("fire schedule %s: %w", f.Schedule, err)
			}
			return fired()
		}
		_, err = w.conn.ExecContext(w.ctx, "INSERT INTO schedule_fires (schedule, at, fired, job_id, error) VALUES (?, ?, ?, ?, ?)",
			f.Schedule, nanos(f.At), nanos(f.Fired), jobID, f.Error)
		if c := extendedCode(err); c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || c == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
			return fired()
		}
		if err != nil {
			return fmt.Errorf("fire schedule %s: %w", f.Schedule, err)
		}
		if _, err := w.conn.ExecContext(w.ctx, `DELETE FROM schedule_fires WHERE schedule = ? AND at <
			(SELECT at FROM schedule_fires WHERE schedule = ? ORDER BY at DESC LIMIT 1 OFFSET ?)`, f.Schedule, f.Schedule, keptFires-1); err != nil {
			return fmt.Errorf("fire schedule %s: prune fires: %w", f.Schedule, err)
		}
		if f.Job == nil {
			return nil
		}
		if _, err := w.exec(w.insSource, srcArgs...); err != nil {
			return fmt.Errorf("fire schedule %s: store source: %w", f.Schedule, err)
		}
		if _, err := w.exec(w.insJob, jobArgv...); err != nil {
			return fmt.Errorf("fire schedule %s: create job %s: %w", f.Schedule, jobID, err)
		}
		return nil
	})
}

// Lease takes or renews a named lease.
func (s *Store) Lease(ctx context.Context, name, holder string, until, now time.Time) (string, time.Time, error) {
	if name == "" || holder == "" {
		return "", time.Time{}, errors.New("lease: no name or no holder")
	}
	var (
		got string
		exp int64
	)
	err := s.write(ctx, func(w *writer) error {
		if _, err := w.conn.ExecContext(w.ctx, `INSERT INTO leases (name, holder, until) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
			WHERE leases.holder = excluded.holder OR leases.until < ?`, name, holder, nanos(until), nanos(now)); err != nil {
			return fmt.Errorf("lease %s: %w", name, err)
		}
		if err := w.conn.QueryRowContext(w.ctx, "SELECT holder, until FROM leases WHERE name = ?", name).Scan(&got, &exp); err != nil {
			return fmt.Errorf("lease %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return "", time.Time{}, err
	}
	return got, fromNanos(exp), nil
}

// ReleaseLease gives up holder's lease.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	return s.write(ctx, func(w *writer) error {
		if _, err := w.conn.ExecContext(w.ctx, "DELETE FROM leases WHERE name = ? AND holder = ?", name, holder); err != nil {
			return fmt.Errorf("release lease %s: %w", name, err)
		}
		return nil
	})
}
