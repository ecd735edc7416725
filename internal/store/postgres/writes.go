package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/drover/drover/internal/job"
)

// Writes prepare their arguments (JSON, arrays) in the caller's goroutine,
// so that encoding runs in parallel and the writers, which all writes
// queue for, only send statements.

const insSource = `INSERT INTO sources (digest, entry, files) VALUES ($1, $2, $3) ON CONFLICT (digest) DO NOTHING`

func sourceArgs(op string, src *job.Source) ([]any, error) {
	if src.Digest == "" {
		return nil, fmt.Errorf("%s: the source has no digest (seal it first)", op)
	}
	files := src.Files
	if files == nil {
		files = map[string]string{}
	}
	b, err := json.Marshal(files)
	if err != nil {
		return nil, fmt.Errorf("%s: source %s: %w", op, src.Digest, err)
	}
	return []any{src.Digest, src.Entry, clean(string(b))}, nil
}

// heldBy reports whether a live engine other than the ones named holds j
// at now.
func heldBy(j *job.Job, now time.Time, except ...string) bool {
	if j.Owner == "" || j.LeaseUntil.Before(now) {
		return false
	}
	for _, e := range except {
		if e != "" && j.Owner == e {
			return false
		}
	}
	return true
}

func heldErr(op string, j *job.Job) error {
	return fmt.Errorf("%s job %s: %s holds it until %s: %w", op, j.ID, j.Owner, j.LeaseUntil.Format(time.RFC3339), job.ErrHeld)
}

func wrongState(op string, j *job.Job, now time.Time) error {
	return fmt.Errorf("%s job %s: it is %s: %w", op, j.ID, j.EffectiveState(now), job.ErrWrongState)
}

// errNoRow is the answer of a conditional statement that changed nothing;
// the caller reads the job to say why.
var errNoRow = errors.New("no row changed")

// notifyCall is the call of pg_notify that tells the listeners a job is
// due, its payload (the schema) parameter number n. Statements put it in
// the RETURNING of the change that makes a job due, so that it runs once
// for each row changed and never for a refused request; NOTIFY delivers
// it when, and only if, the transaction commits, and the identical
// notifications of one transaction once.
func notifyCall(n int) string {
	return fmt.Sprintf("pg_notify('%s', $%d)", notifyChannel, n)
}

// CreateJobs persists the source (once per digest) and the jobs in one
// transaction. It fills in what the caller left zero: Created (now),
// Updated, Digest (the source's), the default persistence and error
// policies, and the state: queued, or running with Runs 1 and Started set
// for a job created with an Owner. Creating a queued job notifies the
// listeners.
func (s *Store) CreateJobs(ctx context.Context, src *job.Source, jobs ...*job.Job) error {
	var srcArgs []any
	if src != nil {
		if src.Digest == "" {
			return errors.New("create jobs: the source has no digest (seal it first)")
		}
		if _, known := s.sources.Load(src.Digest); !known {
			var err error
			if srcArgs, err = sourceArgs("create jobs", src); err != nil {
				return err
			}
		}
	}
	now := time.Now()
	ordered, err := parentsFirst(jobs)
	if err != nil {
		return err
	}
	args := make([][]any, len(ordered))
	due := false
	for i, j := range ordered {
		if err := fillJob(j, src, now); err != nil {
			return err
		}
		args[i] = jobArgs(j)
		due = due || j.State == job.Queued
	}
	const insJob = "INSERT INTO jobs (" + jobColumns + ") VALUES (" + jobPlaceholders + ")"
	failed := -1 // the job whose insert failed, for mapErr
	err = s.write(ctx, &request{
		op: "create jobs",
		build: func(b *pgx.Batch, _ time.Time) {
			if srcArgs != nil {
				b.Queue(insSource, srcArgs...)
			}
			for _, a := range args {
				b.Queue(insJob, a...)
			}
			if due {
				// The inserts either all run or fail the transaction.
				b.Queue("SELECT "+notifyCall(1), s.schema)
			}
		},
		read: func(br pgx.BatchResults) error {
			failed = -1
			if srcArgs != nil {
				if _, err := br.Exec(); err != nil {
					return err
				}
			}
			for i := range args {
				if _, err := br.Exec(); err != nil {
					failed = i
					return err
				}
			}
			if due {
				if _, err := br.Exec(); err != nil {
					return err
				}
			}
			return nil
		},
		mapErr: func(err error) error {
			if failed < 0 {
				return s.dbErr("create jobs", err)
			}
			j := ordered[failed]
			switch constraint(err) {
			case "jobs_pkey":
				return fmt.Errorf("create job %s: a job with this id exists", j.ID)
			case "jobs_parent_id_fkey":
				return fmt.Errorf("create job %s: parent job %s: %w", j.ID, j.ParentID, job.ErrNotFound)
			case "jobs_digest_fkey":
				// Should the source have gone after all, send it again
				// next time.
				s.sources.Delete(j.Digest)
				return fmt.Errorf("create job %s: source %s: %w", j.ID, j.Digest, job.ErrNotFound)
			}
			return s.dbErr("create job "+j.ID, err)
		},
	})
	if err == nil && src != nil {
		s.sources.Store(src.Digest, struct{}{})
	}
	return err
}

// fillJob validates a new job and fills in its defaults.
func fillJob(j *job.Job, src *job.Source, now time.Time) error {
	if j.ID == "" {
		return errors.New("create jobs: a job has no id")
	}
	if j.Digest == "" {
		if src == nil {
			return fmt.Errorf("create job %s: no source digest", j.ID)
		}
		j.Digest = src.Digest
	}
	if j.Created.IsZero() {
		j.Created = now
	}
	if j.Updated.IsZero() {
		j.Updated = j.Created
	}
	if j.Persist == "" {
		j.Persist = job.PersistCheckpoints
	}
	if j.OnError == "" {
		j.OnError = job.OnErrorFail
	}
	switch {
	case j.Owner != "":
		if j.LeaseUntil.IsZero() {
			return fmt.Errorf("create job %s: owner %s set without a lease time", j.ID, j.Owner)
		}
		j.State = job.Running
		if j.Runs == 0 {
			j.Runs = 1
		}
		if j.Started.IsZero() {
			j.Started = j.Created
		}
	case j.State == "":
		j.State = job.Queued
	case j.State == job.Running:
		return fmt.Errorf("create job %s: a running job needs an owner and a lease", j.ID)
	case j.State == job.Interrupted:
		return fmt.Errorf("create job %s: interrupted is not a state a job is created in", j.ID)
	}
	return nil
}

// parentsFirst orders jobs so that a parent created in the same call is
// inserted before its children, which its foreign key needs.
func parentsFirst(jobs []*job.Job) ([]*job.Job, error) {
	byID := make(map[string]*job.Job, len(jobs))
	for _, j := range jobs {
		if j == nil {
			return nil, errors.New("create jobs: nil job")
		}
		byID[j.ID] = j
	}
	out := make([]*job.Job, 0, len(jobs))
	done := make(map[string]bool, len(jobs))
	var visit func(j *job.Job, depth int) error
	visit = func(j *job.Job, depth int) error {
		if done[j.ID] {
			return nil
		}
		if depth > len(jobs) {
			return fmt.Errorf("create job %s: its parents form a cycle", j.ID)
		}
		if p, ok := byID[j.ParentID]; ok && j.ParentID != "" {
			if err := visit(p, depth+1); err != nil {
				return err
			}
		}
		done[j.ID] = true
		out = append(out, j)
		return nil
	}
	for _, j := range jobs {
		if err := visit(j, 0); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Claim gives the job's lease to owner until the given time. It is a
// compare-and-set in one UPDATE whose WHERE holds the rules: the job must
// be in one of states (Interrupted matching a running job whose lease
// expired, or whose owner is steal or nobody), and nobody else may hold
// it. Two servers claiming at once both run the UPDATE; the second waits
// for the first's row lock, and PostgreSQL evaluates its WHERE again on
// the row the first left, so it fails. Leases are compared with this
// process's clock, as in the SQLite store, since Claim is given no time.
func (s *Store) Claim(ctx context.Context, id, owner string, until time.Time, steal string, states []job.State) (*job.Job, error) {
	if owner == "" {
		return nil, fmt.Errorf("claim job %s: no owner given", id)
	}
	names := make([]string, len(states))
	interrupted := false
	for i, st := range states {
		names[i] = string(st)
		interrupted = interrupted || st == job.Interrupted
	}
	const claim = `UPDATE jobs SET state = 'running', owner = $2, lease_until = $3, runs = runs + 1,
		started = coalesce(started, $4), ended = NULL, request = '', updated = $4
		WHERE id = $1
		AND NOT (owner <> '' AND coalesce(lease_until >= $4, false) AND owner <> $2 AND owner <> $5)
		AND (state = ANY($6::text[]) OR ($7 AND state = 'running'
			AND (owner = '' OR coalesce(lease_until, '-infinity') < $4 OR ($5 <> '' AND owner = $5))))
		RETURNING ` + jobColumns
	var (
		out *job.Job
		at  time.Time
	)
	err := s.write(ctx, &request{
		op:  "claim job " + id,
		job: id,
		build: func(b *pgx.Batch, now time.Time) {
			at = now
			b.Queue(claim, id, owner, ts(until), now, steal, names, interrupted)
		},
		read: func(br pgx.BatchResults) error {
			jobs, err := collectBatch(br, scanJob)
			if err != nil {
				return err
			}
			if len(jobs) == 0 {
				return fail(errNoRow)
			}
			out = jobs[0]
			return nil
		},
	})
	if !errors.Is(err, errNoRow) {
		return out, err
	}
	// Say why from the row as it is now.
	j, err := s.Job(ctx, id)
	if err != nil {
		return nil, err
	}
	if heldBy(j, at, owner, steal) {
		return nil, heldErr("claim", j)
	}
	ok := false
	for _, st := range states {
		if st == j.State || st == job.Interrupted && j.State == job.Running &&
			(j.Owner == "" || j.LeaseUntil.Before(at) || steal != "" && j.Owner == steal) {
			ok = true
			break
		}
	}
	if !ok {
		return nil, wrongState("claim", j, at)
	}
	return nil, fmt.Errorf("claim job %s: another engine changed it while this one claimed it: %w", id, job.ErrHeld)
}

// collectBatch reads every row of a batch's next result.
func collectBatch[T any](br pgx.BatchResults, scan func(scanner) (T, error)) ([]T, error) {
	rows, err := br.Query()
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

// Renew extends every lease owner holds and returns the requests pending
// on its jobs. A request stays pending until the owner's Apply clears it,
// so an engine that dies before acting on one leaves it to the next.
func (s *Store) Renew(ctx context.Context, owner string, until time.Time) (map[string]job.Action, error) {
	if owner == "" {
		return nil, errors.New("renew leases: no owner given")
	}
	// owner <> '' lets the planner use the partial index on owner. The
	// rows are locked in id order, the order batches lock jobs in (see
	// runBatch), and Renew comes first in its batch, ahead of the
	// engine's other writes to the same jobs: deadlocks with the other
	// writer's batch become rare. PostgreSQL breaks any left (40P01) and
	// the batch that lost runs again.
	const renew = `WITH u AS (
			UPDATE jobs SET lease_until = $2
			WHERE id IN (SELECT id FROM jobs WHERE owner = $1 AND owner <> '' ORDER BY id FOR NO KEY UPDATE)
			AND owner = $1
			RETURNING id, request
		)
		SELECT id, request FROM u WHERE request <> ''`
	var out map[string]job.Action
	err := s.write(ctx, &request{
		op:    "renew leases of " + owner,
		build: func(b *pgx.Batch, _ time.Time) { b.Queue(renew, owner, ts(until)) },
		read: func(br pgx.BatchResults) error {
			type req struct{ id, a string }
			reqs, err := collectBatch(br, func(sc scanner) (r req, err error) {
				return r, sc.Scan(&r.id, &r.a)
			})
			if err != nil {
				return err
			}
			out = make(map[string]job.Action, len(reqs))
			for _, r := range reqs {
				out[r.id] = job.Action(r.a)
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// applyMask says which of a job's fields and rows an Update writes.
type applyMask uint16

const (
	applyState applyMask = 1 << iota
	applyWakeAt
	applyWaitFor
	applyReason
	applyError
	applyResult
	applyProgress
	applyEnded
	applyClearRequest
	applyRelease
	applyDigest
	applySteps
	applyRecords
	applyConsume
	applyNotify
)

// applyStatement is Apply's one statement for the parts in m: the job's
// UPDATE, fenced by owner, and the inserts and deletes of its rows, which
// all join the UPDATE's result, so that they write nothing when the fence
// holds the update back. One statement is one atomic step of the
// transaction, and the job's row lock, taken first, orders the job's
// records and steps by commit. Its parameters are id, owner, updated,
// then the fields in the order of the mask bits, then the notification's
// payload, then the steps', records' and consumed signals' arrays;
// applyArgs builds them in the same order.
func applyStatement(m applyMask) string {
	var b strings.Builder
	n := 2
	p := func() string {
		n++
		return fmt.Sprintf("$%d", n)
	}
	b.WriteString("WITH j AS (UPDATE jobs SET updated = " + p())
	for _, f := range []struct {
		bit applyMask
		set string
		arg int
	}{
		{applyState, "state", 1},
		{applyWakeAt, "wake_at", 1},
		{applyWaitFor, "wait_for", 1},
		{applyReason, "reason", 1},
		{applyError, "error", 1},
		{applyResult, "result", 1},
		{applyProgress, "progress_done, progress_total, progress_msg", 3},
		{applyEnded, "ended", 1},
		{applyClearRequest, "request = ''", 0},
		{applyRelease, "owner = '', lease_until = NULL", 0},
		{applyDigest, "digest", 1},
	} {
		if m&f.bit == 0 {
			continue
		}
		if f.arg == 0 {
			b.WriteString(", " + f.set)
			continue
		}
		for _, col := range strings.Split(f.set, ", ") {
			b.WriteString(", " + col + " = " + p())
		}
	}
	b.WriteString(" WHERE id = $1 AND owner = $2 RETURNING id")
	if m&applyNotify != 0 {
		n++
		b.WriteString(", " + notifyCall(n))
	}
	b.WriteString(")")
	if m&applySteps != 0 {
		fmt.Fprintf(&b, `, s AS (INSERT INTO steps (job_id, `+stepColumns+`)
			SELECT j.id, x.key, x.activity, x.digest, x.status, x.result, x.error, x.data, x.attempts, x.host, x.position, x.started, x.ended, x.engine
			FROM j, unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::json[], %s::text[], %s::json[], %s::int[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::text[])
				WITH ORDINALITY AS x(key, activity, digest, status, result, error, data, attempts, host, position, started, ended, engine, n)
			ORDER BY x.n
			ON CONFLICT (job_id, key) DO UPDATE SET activity = excluded.activity, digest = excluded.digest,
				status = excluded.status, result = excluded.result, error = excluded.error, data = excluded.data,
				attempts = excluded.attempts, host = excluded.host, position = excluded.position,
				started = excluded.started, ended = excluded.ended, engine = excluded.engine)`,
			p(), p(), p(), p(), p(), p(), p(), p(), p(), p(), p(), p(), p())
	}
	if m&applyRecords != 0 {
		fmt.Fprintf(&b, `, r AS (INSERT INTO records (job_id, stream, key, time, host, value, text)
			SELECT j.id, x.stream, x.key, x.time, x.host, x.value, x.text
			FROM j, unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::json[], %s::text[])
				WITH ORDINALITY AS x(stream, key, time, host, value, text, n)
			ORDER BY x.n
			ON CONFLICT (job_id, stream, key) DO NOTHING)`,
			p(), p(), p(), p(), p(), p())
	}
	if m&applyConsume != 0 {
		fmt.Fprintf(&b, `, c AS (DELETE FROM signals USING j WHERE signals.job_id = j.id AND signals.id = ANY(%s::bigint[]))`, p())
	}
	b.WriteString(" SELECT count(*) FROM j")
	return b.String()
}

func (s *Store) applyStatement(m applyMask) string {
	if q, ok := s.applySQL.Load(m); ok {
		return q.(string)
	}
	q := applyStatement(m)
	s.applySQL.Store(m, q)
	return q
}

// applyArgs is the mask and the arguments of u's statement. notify is the
// payload of the notification the update sends if it commits, "" for none.
func applyArgs(u *job.Update, now time.Time, notify string) (applyMask, []any, error) {
	var m applyMask
	args := make([]any, 3, 32)
	args[0], args[1], args[2] = u.JobID, u.Owner, now
	if u.State != nil {
		if *u.State == "" || *u.State == job.Interrupted {
			return 0, nil, fmt.Errorf("apply to job %s: %q is not a state a job can be put in", u.JobID, *u.State)
		}
		m |= applyState
		args = append(args, string(*u.State))
	}
	if u.WakeAt != nil {
		m |= applyWakeAt
		args = append(args, ts(*u.WakeAt))
	}
	if u.WaitFor != nil {
		m |= applyWaitFor
		args = append(args, names(*u.WaitFor))
	}
	if u.Reason != nil {
		m |= applyReason
		args = append(args, clean(*u.Reason))
	}
	if u.Error != nil {
		m |= applyError
		args = append(args, clean(*u.Error))
	}
	if u.Result != nil {
		m |= applyResult
		args = append(args, jsonArg(u.Result))
	}
	if u.Progress != nil {
		m |= applyProgress
		args = append(args, u.Progress.Done, u.Progress.Total, clean(u.Progress.Message))
	}
	if u.Ended != nil {
		m |= applyEnded
		args = append(args, ts(*u.Ended))
	}
	if u.ClearRequest {
		m |= applyClearRequest
	}
	if u.Release {
		m |= applyRelease
	}
	if u.Digest != "" {
		m |= applyDigest
		args = append(args, u.Digest)
	}
	if notify != "" {
		m |= applyNotify
		args = append(args, notify)
	}
	if len(u.Steps) > 0 {
		for i := range u.Steps {
			if u.Steps[i].Key == "" {
				return 0, nil, fmt.Errorf("apply to job %s: a step has no key", u.JobID)
			}
		}
		m |= applySteps
		args = append(args, newStepArrays(u.Steps).args()...)
	}
	if len(u.Records) > 0 {
		for i := range u.Records {
			if id := u.Records[i].JobID; id != "" && id != u.JobID {
				return 0, nil, fmt.Errorf("apply to job %s: a record is for job %s", u.JobID, id)
			}
		}
		a := newRecordArrays(u.Records)
		m |= applyRecords
		args = append(args, a.stream, a.key, a.time, a.host, a.value, a.text)
	}
	if len(u.Consume) > 0 {
		m |= applyConsume
		args = append(args, u.Consume)
	}
	return m, args, nil
}

// Apply commits an update of a held job atomically. When owner no longer
// holds the job nothing is written and the error is job.ErrLeaseLost. A
// Digest must name a stored source (job.ErrNotFound otherwise). Steps are
// upserted by key, records inserted unless their key exists, consumed
// signals deleted; jobs.steps follows the done steps (see the schema's
// triggers). An update that queues the job, or parks it with a wake time,
// notifies the listeners: another server may take it up, or wake for it.
func (s *Store) Apply(ctx context.Context, u *job.Update) error {
	if u.Owner == "" {
		// An empty owner would match every job nobody holds.
		return fmt.Errorf("apply to job %s: no owner given: %w", u.JobID, job.ErrLeaseLost)
	}
	notify := ""
	if u.State != nil && (*u.State == job.Queued || *u.State == job.Waiting && u.WakeAt != nil && !u.WakeAt.IsZero()) {
		notify = s.schema
	}
	mask, args, err := applyArgs(u, time.Now(), notify)
	if err != nil {
		return err
	}
	q := s.applyStatement(mask)
	err = s.write(ctx, &request{
		op:    "apply to job " + u.JobID,
		job:   u.JobID,
		build: func(b *pgx.Batch, _ time.Time) { b.Queue(q, args...) },
		read: func(br pgx.BatchResults) error {
			var n int
			if err := br.QueryRow().Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				return fail(errNoRow)
			}
			return nil
		},
		mapErr: func(err error) error {
			if constraint(err) == "jobs_digest_fkey" {
				return fmt.Errorf("apply to job %s: source %s: %w", u.JobID, u.Digest, job.ErrNotFound)
			}
			return s.dbErr("apply to job "+u.JobID, err)
		},
	})
	if !errors.Is(err, errNoRow) {
		return err
	}
	// Say why from the row as it is now.
	j, err := s.Job(ctx, u.JobID)
	switch {
	case errors.Is(err, job.ErrNotFound):
		return fmt.Errorf("apply to job %s: the job was deleted: %w", u.JobID, job.ErrLeaseLost)
	case err == nil && j.Owner != "":
		return fmt.Errorf("apply to job %s: %s no longer holds it, %s does: %w", u.JobID, u.Owner, j.Owner, job.ErrLeaseLost)
	}
	return fmt.Errorf("apply to job %s: %s no longer holds it: %w", u.JobID, u.Owner, job.ErrLeaseLost)
}

// Request asks for an action on a job. held is called with the job as
// stored, inside a transaction that holds the job's row lock: it must not
// call the store, and it may be called again if the transaction is retried
// after a lost connection. A job nobody holds is changed at once: suspend
// makes it suspended (a suspended job stays as it is), stop makes it
// stopped; both release any expired lease. A held job gets the request
// recorded, with the reason, for its engine to act on; a pending stop is
// not downgraded to a suspend. Ended jobs refuse both with
// job.ErrWrongState.
//
// Request is not batched: held must see the row before the write is
// decided, which a pipeline cannot wait for. Operators' requests are rare.
func (s *Store) Request(ctx context.Context, id string, a job.Action, reason string, now time.Time, held func(*job.Job) bool) (*job.Job, error) {
	if a != job.ActionSuspend && a != job.ActionStop {
		return nil, fmt.Errorf("request on job %s: unknown action %q", id, a)
	}
	var out *job.Job
	err := s.interactive(ctx, string(a)+" job "+id, func(ctx context.Context, tx *pgxpool.Conn) error {
		j, err := scanJob(tx.QueryRow(ctx, "SELECT "+jobColumns+" FROM jobs WHERE id = $1 FOR NO KEY UPDATE", id))
		if errors.Is(err, pgx.ErrNoRows) {
			return fail(fmt.Errorf("job %s: %w", id, job.ErrNotFound))
		}
		if err != nil {
			return err
		}
		if j.State.Ended() {
			return fail(wrongState(string(a), j, now))
		}
		if held != nil && held(j) {
			req := a
			if j.Request == job.ActionStop {
				req = job.ActionStop
			}
			why := j.Reason
			if reason != "" {
				why = clean(reason)
			}
			if _, err := tx.Exec(ctx, "UPDATE jobs SET request = $2, reason = $3, updated = $4 WHERE id = $1",
				id, string(req), why, now); err != nil {
				return err
			}
			j.Request, j.Reason, j.Updated = req, why, now
			out = j
			return nil
		}
		to, ended := job.Suspended, time.Time{}
		if a == job.ActionStop {
			to, ended = job.Stopped, now
		} else if j.State == job.Suspended {
			out = j
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE jobs SET state = $2, owner = '', lease_until = NULL, request = '', reason = $3, ended = $4, updated = $5
			WHERE id = $1`, id, string(to), clean(reason), ts(ended), now); err != nil {
			return err
		}
		j.State, j.Owner, j.LeaseUntil, j.Request = to, "", time.Time{}, job.ActionNone
		j.Reason, j.Ended, j.Updated = clean(reason), ended, now
		out = j
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// SetState moves a job nobody holds at now from one of the states from
// (Interrupted matching a running job whose lease expired) to the state
// to, clearing its lease and any request. Moving to an ended state sets
// Ended; moving to another clears it. Moving to queued notifies the
// listeners.
func (s *Store) SetState(ctx context.Context, id string, from []job.State, to job.State, now time.Time) (*job.Job, error) {
	if to == job.Running || to == job.Interrupted || to == "" {
		return nil, fmt.Errorf("set job %s %q: a job becomes running only by a claim", id, to)
	}
	froms := make([]string, len(from))
	for i, st := range from {
		froms[i] = string(st)
	}
	var ended time.Time
	if to.Ended() {
		ended = now
	}
	const setState = `UPDATE jobs SET state = $2, owner = '', lease_until = NULL, request = '', ended = $3, updated = $4
		WHERE id = $1
		AND NOT (owner <> '' AND coalesce(lease_until >= $4, false))
		AND (CASE WHEN state = 'running' AND lease_until < $4 THEN 'interrupted' ELSE state END) = ANY($5::text[])
		RETURNING `
	q := setState + jobColumns
	args := []any{id, string(to), ts(ended), now, froms}
	if to == job.Queued {
		q = "WITH u AS (" + setState + jobColumns + ", " + notifyCall(6) + ") SELECT " + jobColumns + " FROM u"
		args = append(args, s.schema)
	}
	var out *job.Job
	err := s.write(ctx, &request{
		op:    fmt.Sprintf("set job %s %s", id, to),
		job:   id,
		build: func(b *pgx.Batch, _ time.Time) { b.Queue(q, args...) },
		read: func(br pgx.BatchResults) error {
			jobs, err := collectBatch(br, scanJob)
			if err != nil {
				return err
			}
			if len(jobs) == 0 {
				return fail(errNoRow)
			}
			out = jobs[0]
			return nil
		},
	})
	if !errors.Is(err, errNoRow) {
		return out, err
	}
	j, err := s.Job(ctx, id)
	if err != nil {
		return nil, err
	}
	if heldBy(j, now) {
		return nil, heldErr("set state of", j)
	}
	if !slices.Contains(from, j.EffectiveState(now)) {
		return nil, wrongState("set state of", j, now)
	}
	return nil, fmt.Errorf("set state of job %s: another engine changed it meanwhile: %w", id, job.ErrHeld)
}

// AppendRecords stores output and log records, ignoring those whose
// (job, stream, key) exists. It takes the row locks of the records' jobs
// first, as Apply does, so that one job's seqs follow commit order.
func (s *Store) AppendRecords(ctx context.Context, recs []job.Record) error {
	if len(recs) == 0 {
		return nil
	}
	for i := range recs {
		if recs[i].JobID == "" || recs[i].Key == "" {
			return errors.New("append records: a record has no job or no key")
		}
	}
	a := newRecordArrays(recs)
	const ins = `WITH l AS (SELECT id FROM jobs WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE)
		INSERT INTO records (job_id, stream, key, time, host, value, text)
		SELECT x.job_id, x.stream, x.key, x.time, x.host, x.value, x.text
		FROM (SELECT count(*) FROM l) locked,
			unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::json[], $7::text[])
			WITH ORDINALITY AS x(job_id, stream, key, time, host, value, text, n)
		ORDER BY x.n
		ON CONFLICT (job_id, stream, key) DO NOTHING`
	return s.write(ctx, &request{
		op:  "append records",
		job: slices.Min(a.jobID),
		build: func(b *pgx.Batch, _ time.Time) {
			b.Queue(ins, a.jobID, a.stream, a.key, a.time, a.host, a.value, a.text)
		},
		read: func(br pgx.BatchResults) error {
			_, err := br.Exec()
			return err
		},
		mapErr: func(err error) error {
			if constraint(err) == "records_job_id_fkey" {
				return fmt.Errorf("append records: job %s: %w", missingKey(err), job.ErrNotFound)
			}
			return s.dbErr("append records", err)
		},
	})
}

// missingKey is the key value a foreign key violation names in its detail,
// `Key (job_id)=(x) is not present in table "jobs".`
func missingKey(err error) string {
	var d string
	if pe := pgError(err); pe != nil {
		d = pe.Detail
	}
	_, v, ok := strings.Cut(d, ")=(")
	if !ok {
		return "?"
	}
	v, _, _ = strings.Cut(v, ") is not present")
	return v
}

// Signal delivers a signal to a job waiting for its name and makes the job
// queued, in one statement: the signal is stored only when the job's
// UPDATE found it waiting for the name. It sets sig.ID, and sig.Time when
// zero; the job's Updated is sig.Time, the engine's clock. It notifies the
// listeners.
func (s *Store) Signal(ctx context.Context, sig *job.Signal) (*job.Job, error) {
	if sig.Name == "" {
		return nil, fmt.Errorf("signal job %s: no signal name", sig.JobID)
	}
	if sig.Time.IsZero() {
		sig.Time = time.Now()
	}
	const signal = `WITH j AS (
			UPDATE jobs SET state = 'queued', updated = $5
			WHERE id = $1 AND state = 'waiting' AND $2 = ANY(wait_for)
			RETURNING ` + jobColumns + `
		), s AS (
			INSERT INTO signals (job_id, name, payload, sender, time) SELECT id, $2, $3, $4, $5 FROM j
			RETURNING id, ` + "pg_notify('" + notifyChannel + `', $6)
		)
		SELECT s.id, j.* FROM j, s`
	var (
		out   *job.Job
		sigID int64
	)
	payload, sender := jsonArg(sig.Payload), clean(sig.Sender)
	err := s.write(ctx, &request{
		op:  fmt.Sprintf("signal %s to job %s", sig.Name, sig.JobID),
		job: sig.JobID,
		build: func(b *pgx.Batch, _ time.Time) {
			b.Queue(signal, sig.JobID, clean(sig.Name), payload, sender, sig.Time, s.schema)
		},
		read: func(br pgx.BatchResults) error {
			var id int64
			jobs, err := collectBatch(br, func(sc scanner) (*job.Job, error) {
				return scanJob(prefixScanner{sc, []any{&id}})
			})
			if err != nil {
				return err
			}
			if len(jobs) == 0 {
				return fail(errNoRow)
			}
			out, sigID = jobs[0], id
			return nil
		},
	})
	if err == nil {
		sig.ID = sigID
		return out, nil
	}
	if !errors.Is(err, errNoRow) {
		return nil, err
	}
	j, err := s.Job(ctx, sig.JobID)
	if err != nil {
		return nil, err
	}
	waits := ""
	if len(j.WaitFor) > 0 {
		waits = " for " + strings.Join(j.WaitFor, ", ")
	}
	st := j.EffectiveState(sig.Time)
	if st == job.Waiting {
		return nil, fmt.Errorf("signal %s to job %s: it is waiting%s, not for %s: %w", sig.Name, j.ID, waits, sig.Name, job.ErrNotWaiting)
	}
	return nil, fmt.Errorf("signal %s to job %s: it is %s: %w", sig.Name, j.ID, st, job.ErrNotWaiting)
}

// prefixScanner scans the columns before a job's into pre.
type prefixScanner struct {
	sc  scanner
	pre []any
}

func (p prefixScanner) Scan(dest ...any) error {
	return p.sc.Scan(append(p.pre[:len(p.pre):len(p.pre)], dest...)...)
}

// DeleteJob removes a job with its journal, records, signals and
// children, through the schema's cascading foreign keys.
func (s *Store) DeleteJob(ctx context.Context, id string) error {
	return s.write(ctx, &request{
		op:    "delete job " + id,
		job:   id,
		build: func(b *pgx.Batch, _ time.Time) { b.Queue("DELETE FROM jobs WHERE id = $1", id) },
		read: func(br pgx.BatchResults) error {
			tag, err := br.Exec()
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return fail(fmt.Errorf("job %s: %w", id, job.ErrNotFound))
			}
			return nil
		},
	})
}

// PutWorkflow registers src under name. A new name starts at version 1; a
// different source makes the next version; the same source changes
// nothing.
func (s *Store) PutWorkflow(ctx context.Context, name string, src *job.Source, now time.Time) (*job.Workflow, error) {
	if name == "" {
		return nil, errors.New("register workflow: no name")
	}
	if src == nil || src.Digest == "" {
		return nil, fmt.Errorf("register workflow %s: the source has no digest (seal it first)", name)
	}
	srcArgs, err := sourceArgs("register workflow "+name, src)
	if err != nil {
		return nil, err
	}
	const put = `INSERT INTO workflows (` + workflowColumns + `) VALUES ($1, $2, $3, 1, $4, $4)
		ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, entry = excluded.entry,
			version = workflows.version + 1, updated = excluded.updated
		WHERE workflows.digest <> excluded.digest`
	var out *job.Workflow
	err = s.write(ctx, &request{
		op: "register workflow " + name,
		build: func(b *pgx.Batch, _ time.Time) {
			b.Queue(insSource, srcArgs...)
			b.Queue(put, name, src.Digest, src.Entry, now)
			b.Queue("SELECT "+workflowColumns+" FROM workflows WHERE name = $1", name)
		},
		read: func(br pgx.BatchResults) error {
			for range 2 {
				if _, err := br.Exec(); err != nil {
					return err
				}
			}
			w, err := scanWorkflow(br.QueryRow())
			if err != nil {
				return err
			}
			out = w
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	s.sources.Store(src.Digest, struct{}{})
	return out, nil
}

// DeleteWorkflow removes a registered workflow. Its sources stay for the
// jobs that replay them.
func (s *Store) DeleteWorkflow(ctx context.Context, name string) error {
	return s.write(ctx, &request{
		op:    "delete workflow " + name,
		build: func(b *pgx.Batch, _ time.Time) { b.Queue("DELETE FROM workflows WHERE name = $1", name) },
		read: func(br pgx.BatchResults) error {
			tag, err := br.Exec()
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return fail(fmt.Errorf("workflow %s: %w", name, job.ErrNotFound))
			}
			return nil
		},
	})
}
