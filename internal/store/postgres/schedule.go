package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/drover/drover/internal/job"
)

const scheduleColumns = `name, cron, timezone, workflow, params, created_by, created, next_fire, last_fire, last_job, last_error, fires`

// keptFires is how many fire records of a schedule are kept. Only the
// latest matter for the unique key: a fire also needs the schedule's
// next_fire to still be its time, and next_fire only moves forward.
const keptFires = 1000

func scanSchedule(sc scanner) (*job.Schedule, error) {
	var (
		s                 job.Schedule
		params            []byte
		created, nextFire time.Time
		lastFire          *time.Time
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
	s.Created, s.NextFire, s.LastFire = created, nextFire, fromPtr(lastFire)
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
	const ins = `INSERT INTO schedules (` + scheduleColumns + `) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
		ON CONFLICT (name) DO NOTHING`
	return s.write(ctx, &request{
		op: "add schedule " + sc.Name,
		build: func(b *pgx.Batch, _ time.Time) {
			b.Queue(ins, sc.Name, clean(sc.Cron), clean(sc.Timezone), clean(sc.Workflow), string(params), clean(sc.CreatedBy),
				sc.Created, sc.NextFire, ts(sc.LastFire), sc.LastJob, clean(sc.LastError), sc.Fires)
		},
		read: func(br pgx.BatchResults) error {
			tag, err := br.Exec()
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return fail(fmt.Errorf("schedule %s: %w", sc.Name, job.ErrExists))
			}
			return nil
		},
	})
}

// Schedule returns one schedule.
func (s *Store) Schedule(ctx context.Context, name string) (*job.Schedule, error) {
	var sc *job.Schedule
	err := s.read(ctx, "read schedule "+name, func(ctx context.Context, q querier) (err error) {
		sc, err = scanSchedule(q.QueryRow(ctx, "SELECT "+scheduleColumns+" FROM schedules WHERE name = $1", name))
		if errors.Is(err, pgx.ErrNoRows) {
			return fail(fmt.Errorf("schedule %s: %w", name, job.ErrNotFound))
		}
		return err
	})
	return sc, err
}

// Schedules lists the schedules by name.
func (s *Store) Schedules(ctx context.Context) ([]*job.Schedule, error) {
	var out []*job.Schedule
	err := s.read(ctx, "list schedules", func(ctx context.Context, q querier) (err error) {
		out, err = collect(ctx, q, scanSchedule, "SELECT "+scheduleColumns+" FROM schedules ORDER BY name")
		return err
	})
	return out, err
}

// DeleteSchedule removes a schedule and its fire records; the jobs it
// created stay.
func (s *Store) DeleteSchedule(ctx context.Context, name string) error {
	return s.write(ctx, &request{
		op: "delete schedule " + name,
		build: func(b *pgx.Batch, _ time.Time) {
			b.Queue("DELETE FROM schedules WHERE name = $1", name)
			b.Queue("DELETE FROM schedule_fires WHERE schedule = $1", name)
		},
		read: func(br pgx.BatchResults) error {
			tag, err := br.Exec()
			if err != nil {
				return err
			}
			if _, err := br.Exec(); err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return fail(fmt.Errorf("schedule %s: %w", name, job.ErrNotFound))
			}
			return nil
		},
	})
}

// FireSchedule commits a fire in a transaction of its own, which reads
// before it writes: the schedule moves on only from f.At, the fire's key
// must be new, and only then is the job created.
func (s *Store) FireSchedule(ctx context.Context, f *job.Fire) error {
	var (
		srcArgs []any
		jobArgv []any
		jobID   string
	)
	if f.Job != nil {
		if f.Source == nil {
			return fmt.Errorf("fire schedule %s: the job has no source", f.Schedule)
		}
		var err error
		if srcArgs, err = sourceArgs("fire schedule "+f.Schedule, f.Source); err != nil {
			return err
		}
		if err := fillJob(f.Job, f.Source, f.Fired); err != nil {
			return err
		}
		jobArgv = jobArgs(f.Job)
		jobID = f.Job.ID
	}
	fired := fail(fmt.Errorf("schedule %s at %s: %w", f.Schedule, f.At.UTC().Format(time.RFC3339), job.ErrFired))
	const insJob = "INSERT INTO jobs (" + jobColumns + ") VALUES (" + jobPlaceholders + ")"
	err := s.interactive(ctx, "fire schedule "+f.Schedule, func(ctx context.Context, tx *pgxpool.Conn) error {
		tag, err := tx.Exec(ctx, `UPDATE schedules SET next_fire = $1, last_fire = $2, last_job = $3, last_error = $4, fires = fires + 1
			WHERE name = $5 AND next_fire = $2`, f.Next, f.At, jobID, clean(f.Error), f.Schedule)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			var one int
			err := tx.QueryRow(ctx, "SELECT 1 FROM schedules WHERE name = $1", f.Schedule).Scan(&one)
			if errors.Is(err, pgx.ErrNoRows) {
				return fail(fmt.Errorf("schedule %s: %w", f.Schedule, job.ErrNotFound))
			}
			if err != nil {
				return err
			}
			return fired
		}
		tag, err = tx.Exec(ctx, `INSERT INTO schedule_fires (schedule, at, fired, job_id, error) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (schedule, at) DO NOTHING`, f.Schedule, f.At, f.Fired, jobID, clean(f.Error))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fired
		}
		if _, err := tx.Exec(ctx, `DELETE FROM schedule_fires WHERE schedule = $1 AND at <
			(SELECT at FROM schedule_fires WHERE schedule = $1 ORDER BY at DESC OFFSET $2 LIMIT 1)`, f.Schedule, keptFires-1); err != nil {
			return err
		}
		if f.Job == nil {
			return nil
		}
		if _, err := tx.Exec(ctx, insSource, srcArgs...); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, insJob, jobArgv...)
		return err
	})
	if err != nil {
		return err
	}
	if f.Job != nil {
		s.sources.Store(f.Source.Digest, struct{}{})
		// The other servers hear of the queued job now rather than at
		// their next poll; a lost notification only delays it.
		_ = s.Notify(ctx)
	}
	return nil
}

// Lease takes or renews a named lease.
func (s *Store) Lease(ctx context.Context, name, holder string, until, now time.Time) (string, time.Time, error) {
	if name == "" || holder == "" {
		return "", time.Time{}, errors.New("lease: no name or no holder")
	}
	const take = `INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
		WHERE leases.holder = excluded.holder OR leases.until < $4`
	var (
		got string
		exp time.Time
	)
	err := s.write(ctx, &request{
		op: "lease " + name,
		build: func(b *pgx.Batch, _ time.Time) {
			b.Queue(take, name, holder, until, now)
			b.Queue("SELECT holder, until FROM leases WHERE name = $1", name)
		},
		read: func(br pgx.BatchResults) error {
			if _, err := br.Exec(); err != nil {
				return err
			}
			return br.QueryRow().Scan(&got, &exp)
		},
	})
	if err != nil {
		return "", time.Time{}, err
	}
	return got, exp, nil
}

// ReleaseLease gives up holder's lease.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	return s.write(ctx, &request{
		op: "release lease " + name,
		build: func(b *pgx.Batch, _ time.Time) {
			b.Queue("DELETE FROM leases WHERE name = $1 AND holder = $2", name, holder)
		},
		read: func(br pgx.BatchResults) error {
			_, err := br.Exec()
			return err
		},
	})
}
