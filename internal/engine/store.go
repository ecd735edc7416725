package engine

import (
	"context"
	"time"

	"github.com/drover/drover/internal/job"
)

// Store is what the engine needs from persistence. The SQLite and
// PostgreSQL stores implement it; storetest holds the contract both pass.
//
// Times passed in come from the engine's clock so that leases compare
// against one notion of now. Every write is durable when the call returns.
type Store interface {
	// CreateJobs persists jobs and their source in one transaction. A job
	// whose Owner is set is created already claimed until LeaseUntil, so
	// that the engine that creates a job can run it without a second write.
	CreateJobs(ctx context.Context, src *job.Source, jobs ...*job.Job) error
	// Job returns one job, or job.ErrNotFound.
	Job(ctx context.Context, id string) (*job.Job, error)
	// Jobs lists jobs, oldest first.
	Jobs(ctx context.Context, f job.Filter, now time.Time) ([]*job.Job, error)
	// CountChildren counts a parent's children by stored state.
	CountChildren(ctx context.Context, parentID string, now time.Time) (map[job.State]int, error)
	// DeleteJob removes a job with its journal, records, signals and
	// children.
	DeleteJob(ctx context.Context, id string) error
	// Source returns a stored source by digest.
	Source(ctx context.Context, digest string) (*job.Source, error)

	// Claim gives the job's lease to owner until the given time, if nobody
	// holds it: no owner, an expired lease, or the owner named by steal
	// (an engine known to be dead). The job must be in one of the given
	// states. It returns the job as claimed, job.ErrHeld when a live engine
	// holds it, job.ErrWrongState when its state does not allow it.
	Claim(ctx context.Context, id, owner string, until time.Time, steal string, states []job.State) (*job.Job, error)
	// Renew extends every lease owner holds and returns the actions
	// operators requested of its jobs since.
	Renew(ctx context.Context, owner string, until time.Time) (map[string]job.Action, error)
	// Apply commits an update of a held job atomically. It returns
	// job.ErrLeaseLost when owner no longer holds the job.
	Apply(ctx context.Context, u *job.Update) error
	// Request asks for an action on a job. A job nobody holds (held reports
	// false) is changed at once: suspend makes it suspended, stop makes it
	// stopped. A held job gets the request recorded for its engine.
	Request(ctx context.Context, id string, a job.Action, reason string, now time.Time, held func(*job.Job) bool) (*job.Job, error)
	// SetState moves jobs nobody holds into a state, for operators'
	// actions on jobs that are not running (resume makes them queued).
	SetState(ctx context.Context, id string, from []job.State, to job.State, now time.Time) (*job.Job, error)

	// Journal returns a job's steps.
	Journal(ctx context.Context, jobID string) ([]job.Step, error)
	// AppendRecords stores output and log records; a record whose
	// (job, stream, key) exists is ignored.
	AppendRecords(ctx context.Context, recs []job.Record) error
	// Records returns a stream's records with Seq greater than after.
	Records(ctx context.Context, jobID string, s job.Stream, after int64, limit int) ([]job.Record, error)

	// Signal delivers a signal to a job waiting for that name and makes the
	// job queued. It returns job.ErrNotWaiting otherwise.
	Signal(ctx context.Context, sig *job.Signal) (*job.Job, error)
	// Signals returns a job's undelivered signals, oldest first.
	Signals(ctx context.Context, jobID string) ([]job.Signal, error)

	// Due lists jobs an engine should take up now: queued jobs and
	// waiting jobs whose wake time has come, oldest first.
	Due(ctx context.Context, now time.Time, limit int) ([]string, error)
	// NextWake is the earliest wake time of a waiting job, zero if none.
	NextWake(ctx context.Context) (time.Time, error)

	// Workflow registry.
	PutWorkflow(ctx context.Context, name string, src *job.Source, now time.Time) (*job.Workflow, error)
	Workflow(ctx context.Context, name string) (*job.Workflow, error)
	Workflows(ctx context.Context) ([]*job.Workflow, error)
	DeleteWorkflow(ctx context.Context, name string) error

	// Schedules (see schedule.go). AddSchedule fails with job.ErrExists
	// for a name in use; Schedule and DeleteSchedule with job.ErrNotFound
	// for an unknown one. Schedules lists them by name.
	AddSchedule(ctx context.Context, sc *job.Schedule) error
	Schedule(ctx context.Context, name string) (*job.Schedule, error)
	Schedules(ctx context.Context) ([]*job.Schedule, error)
	DeleteSchedule(ctx context.Context, name string) error
	// FireSchedule commits a fire in one transaction: its record, keyed
	// by (f.Schedule, f.At), the job (when f.Job is set) and the
	// schedule's move to f.Next. It fails with job.ErrFired, writing
	// nothing, when the schedule's NextFire is no longer f.At or that key
	// exists: another server fired it.
	FireSchedule(ctx context.Context, f *job.Fire) error

	// Lease takes or renews the named lease for holder until the given
	// time, when holder holds it, nobody does, or its lease expired at
	// now. It returns who holds it after the attempt, until when.
	Lease(ctx context.Context, name, holder string, until, now time.Time) (string, time.Time, error)
	// ReleaseLease gives up holder's lease, so that another takes over
	// without waiting for it to expire; a no-op if holder does not hold it.
	ReleaseLease(ctx context.Context, name, holder string) error

	Close() error
}
