package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/drover/drover/internal/job"
)

// Writes prepare their arguments (JSON, times) in the caller's goroutine,
// so that encoding runs in parallel and the writer goroutine, which all
// writes queue for, only runs statements.

// loadJob reads a job inside the write transaction.
func (w *writer) loadJob(id string) (*job.Job, error) {
	j, err := scanJob(w.jobByID.QueryRowContext(w.ctx, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("job %s: %w", id, job.ErrNotFound)
	}
	return j, err
}

func (w *writer) exists(st *sql.Stmt, key string) (bool, error) {
	var one int
	err := st.QueryRowContext(w.ctx, key).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

func extendedCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// heldBy reports whether a live engine other than the ones named holds j
// at now (in unix nanoseconds).
func heldBy(j *job.Job, now int64, except ...string) bool {
	if j.Owner == "" || nanos(j.LeaseUntil) < now {
		return false
	}
	for _, e := range except {
		if e != "" && j.Owner == e {
			return false
		}
	}
	return true
}

func (s *Store) heldErr(op string, j *job.Job) error {
	return fmt.Errorf("%s job %s: %s holds it until %s: %w", op, j.ID, j.Owner, j.LeaseUntil.Format(time.RFC3339), job.ErrHeld)
}

func wrongState(op string, j *job.Job, now time.Time) error {
	return fmt.Errorf("%s job %s: it is %s: %w", op, j.ID, j.EffectiveState(now), job.ErrWrongState)
}

// CreateJobs persists the source (once per digest) and the jobs in one
// transaction. It fills in what the caller left zero: Created (now),
// Updated, Digest (the source's), the default persistence and error
// policies, and the state: queued, or running with Runs 1 and Started set
// for a job created with an Owner.
func (s *Store) CreateJobs(ctx context.Context, src *job.Source, jobs ...*job.Job) error {
	var srcArgs []any
	if src != nil {
		if src.Digest == "" {
			return errors.New("create jobs: the source has no digest (seal it first)")
		}
		files := src.Files
		if files == nil {
			files = map[string]string{}
		}
		b, err := json.Marshal(files)
		if err != nil {
			return fmt.Errorf("create jobs: source %s: %w", src.Digest, err)
		}
		srcArgs = []any{src.Digest, src.Entry, string(b)}
	}
	now := time.Now()
	ordered, err := parentsFirst(jobs)
	if err != nil {
		return err
	}
	inBatch := make(map[string]bool, len(ordered))
	args := make([][]any, len(ordered))
	for i, j := range ordered {
		if err := fillJob(j, src, now); err != nil {
			return err
		}
		if args[i], err = jobArgs(j); err != nil {
			return fmt.Errorf("create jobs: %w", err)
		}
		inBatch[j.ID] = true
	}
	return s.write(ctx, func(w *writer) error {
		if srcArgs != nil {
			if _, err := w.exec(w.insSource, srcArgs...); err != nil {
				return fmt.Errorf("create jobs: store source: %w", err)
			}
		}
		for i, j := range ordered {
			// Missing references are checked first so that the error says
			// which one is missing rather than "FOREIGN KEY constraint failed".
			if j.ParentID != "" && !inBatch[j.ParentID] {
				ok, err := w.exists(w.hasJob, j.ParentID)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("create job %s: parent job %s: %w", j.ID, j.ParentID, job.ErrNotFound)
				}
			}
			if src == nil || j.Digest != src.Digest {
				ok, err := w.exists(w.hasSource, j.Digest)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("create job %s: source %s: %w", j.ID, j.Digest, job.ErrNotFound)
				}
			}
			if _, err := w.exec(w.insJob, args[i]...); err != nil {
				if c := extendedCode(err); c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || c == sqlite3.SQLITE_CONSTRAINT_UNIQUE {
					return fmt.Errorf("create job %s: a job with this id exists", j.ID)
				}
				return fmt.Errorf("create job %s: %w", j.ID, err)
			}
		}
		return nil
	})
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
// compare-and-set on the stored row: the job must be in one of states
// (Interrupted matching a running job whose lease expired, or whose owner
// is steal or nobody), and nobody else may hold it. Leases are compared
// with the store's clock, since Claim is given no time.
func (s *Store) Claim(ctx context.Context, id, owner string, until time.Time, steal string, states []job.State) (*job.Job, error) {
	if owner == "" {
		return nil, fmt.Errorf("claim job %s: no owner given", id)
	}
	var out *job.Job
	err := s.write(ctx, func(w *writer) error {
		now := time.Now()
		nowN := now.UnixNano()
		j, err := w.loadJob(id)
		if err != nil {
			return err
		}
		if heldBy(j, nowN, owner, steal) {
			return s.heldErr("claim", j)
		}
		ok := false
		for _, st := range states {
			if st == j.State || st == job.Interrupted && j.State == job.Running &&
				(j.Owner == "" || nanos(j.LeaseUntil) < nowN || steal != "" && j.Owner == steal) {
				ok = true
				break
			}
		}
		if !ok {
			return wrongState("claim", j, now)
		}
		if _, err := w.exec(w.claim, owner, nanos(until), nowN, nowN, id); err != nil {
			return fmt.Errorf("claim job %s: %w", id, err)
		}
		j.State, j.Owner, j.LeaseUntil, j.Request = job.Running, owner, until, job.ActionNone
		j.Runs++
		if j.Started.IsZero() {
			j.Started = time.Unix(0, nowN)
		}
		j.Ended, j.Updated = time.Time{}, time.Unix(0, nowN)
		out = j
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Renew extends every lease owner holds and returns the requests pending
// on its jobs. A request stays pending until the owner's Apply clears it,
// so an engine that dies before acting on one leaves it to the next.
func (s *Store) Renew(ctx context.Context, owner string, until time.Time) (map[string]job.Action, error) {
	if owner == "" {
		return nil, errors.New("renew leases: no owner given")
	}
	var out map[string]job.Action
	err := s.write(ctx, func(w *writer) error {
		if _, err := w.exec(w.renew, nanos(until), owner); err != nil {
			return fmt.Errorf("renew leases of %s: %w", owner, err)
		}
		rows, err := w.requests.QueryContext(w.ctx, owner)
		if err != nil {
			return fmt.Errorf("renew leases of %s: %w", owner, err)
		}
		defer rows.Close()
		m := make(map[string]job.Action)
		for rows.Next() {
			var id, a string
			if err := rows.Scan(&id, &a); err != nil {
				return fmt.Errorf("renew leases of %s: %w", owner, err)
			}
			m[id] = job.Action(a)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("renew leases of %s: %w", owner, err)
		}
		out = m
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// applyMask says which of a job's fields an Update sets.
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
)

// applySQL is the fenced UPDATE for the fields in m. Its parameters are
// updated, then the fields in the order of the mask bits, then id and
// owner; applyArgs builds them in the same order.
func applySQL(m applyMask) string {
	var b strings.Builder
	b.WriteString("UPDATE jobs SET updated = ?")
	for _, f := range []struct {
		bit applyMask
		set string
	}{
		{applyState, ", state = ?"},
		{applyWakeAt, ", wake_at = ?"},
		{applyWaitFor, ", wait_for = ?"},
		{applyReason, ", reason = ?"},
		{applyError, ", error = ?"},
		{applyResult, ", result = ?"},
		{applyProgress, ", progress_done = ?, progress_total = ?, progress_msg = ?"},
		{applyEnded, ", ended = ?"},
		{applyClearRequest, ", request = ''"},
		{applyRelease, ", owner = '', lease_until = 0"},
		{applyDigest, ", digest = ?"},
	} {
		if m&f.bit != 0 {
			b.WriteString(f.set)
		}
	}
	b.WriteString(" WHERE id = ? AND owner = ?")
	return b.String()
}

func applyArgs(u *job.Update, now time.Time) (applyMask, []any, error) {
	var m applyMask
	args := make([]any, 1, 16)
	args[0] = nanos(now)
	if u.State != nil {
		if *u.State == "" || *u.State == job.Interrupted {
			return 0, nil, fmt.Errorf("apply to job %s: %q is not a state a job can be put in", u.JobID, *u.State)
		}
		m |= applyState
		args = append(args, string(*u.State))
	}
	if u.WakeAt != nil {
		m |= applyWakeAt
		args = append(args, nanos(*u.WakeAt))
	}
	if u.WaitFor != nil {
		names, err := encodeNames(*u.WaitFor)
		if err != nil {
			return 0, nil, fmt.Errorf("apply to job %s: wait names: %w", u.JobID, err)
		}
		m |= applyWaitFor
		args = append(args, names)
	}
	if u.Reason != nil {
		m |= applyReason
		args = append(args, *u.Reason)
	}
	if u.Error != nil {
		m |= applyError
		args = append(args, *u.Error)
	}
	if u.Result != nil {
		m |= applyResult
		args = append(args, jsonText(u.Result))
	}
	if u.Progress != nil {
		m |= applyProgress
		args = append(args, u.Progress.Done, u.Progress.Total, u.Progress.Message)
	}
	if u.Ended != nil {
		m |= applyEnded
		args = append(args, nanos(*u.Ended))
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
	args = append(args, u.JobID, u.Owner)
	return m, args, nil
}

func (w *writer) applyStmt(m applyMask) (*sql.Stmt, error) {
	if st, ok := w.apply[m]; ok {
		return st, nil
	}
	st, err := w.conn.PrepareContext(w.ctx, applySQL(m))
	if err != nil {
		return nil, err
	}
	w.apply[m] = st
	return st, nil
}

// Apply commits an update of a held job in one transaction. The job's
// UPDATE is fenced by owner and runs first: when owner no longer holds the
// job nothing is written and the error is job.ErrLeaseLost. A Digest must
// name a stored source (job.ErrNotFound otherwise). Steps are upserted by
// key, records inserted unless their key exists, consumed signals deleted;
// jobs.steps follows the done steps (see the schema's triggers).
func (s *Store) Apply(ctx context.Context, u *job.Update) error {
	if u.Owner == "" {
		// An empty owner would match every job nobody holds.
		return fmt.Errorf("apply to job %s: no owner given: %w", u.JobID, job.ErrLeaseLost)
	}
	mask, args, err := applyArgs(u, time.Now())
	if err != nil {
		return err
	}
	steps := make([][]any, len(u.Steps))
	for i := range u.Steps {
		if u.Steps[i].Key == "" {
			return fmt.Errorf("apply to job %s: a step has no key", u.JobID)
		}
		steps[i] = stepArgs(u.JobID, &u.Steps[i])
	}
	recs := make([][]any, len(u.Records))
	for i := range u.Records {
		r := u.Records[i]
		if r.JobID == "" {
			r.JobID = u.JobID
		} else if r.JobID != u.JobID {
			return fmt.Errorf("apply to job %s: a record is for job %s", u.JobID, r.JobID)
		}
		recs[i] = recordArgs(&r)
	}
	return s.write(ctx, func(w *writer) error {
		st, err := w.applyStmt(mask)
		if err != nil {
			return fmt.Errorf("apply to job %s: %w", u.JobID, err)
		}
		res, err := w.exec(st, args...)
		if err != nil {
			if u.Digest != "" && extendedCode(err) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY {
				return fmt.Errorf("apply to job %s: source %s: %w", u.JobID, u.Digest, job.ErrNotFound)
			}
			return fmt.Errorf("apply to job %s: %w", u.JobID, err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if ok, _ := w.exists(w.hasJob, u.JobID); !ok {
				return fmt.Errorf("apply to job %s: the job was deleted: %w", u.JobID, job.ErrLeaseLost)
			}
			return fmt.Errorf("apply to job %s: %s no longer holds it: %w", u.JobID, u.Owner, job.ErrLeaseLost)
		}
		for _, a := range steps {
			if _, err := w.exec(w.upsertStep, a...); err != nil {
				return fmt.Errorf("apply to job %s: step %v: %w", u.JobID, a[1], err)
			}
		}
		for _, a := range recs {
			if _, err := w.exec(w.insRecord, a...); err != nil {
				return fmt.Errorf("apply to job %s: record %v: %w", u.JobID, a[2], err)
			}
		}
		for _, id := range u.Consume {
			if _, err := w.exec(w.delSignal, id, u.JobID); err != nil {
				return fmt.Errorf("apply to job %s: consume signal %d: %w", u.JobID, id, err)
			}
		}
		return nil
	})
}

// Request asks for an action on a job. held is called with the job as
// stored, inside the write transaction, with the store's writer held:
// it must not call the store. A job nobody holds is changed at once:
// suspend makes it suspended (a suspended job stays as it is), stop makes
// it stopped; both release any expired lease. A held job gets the request
// recorded, with the reason, for its engine to act on; a pending stop is
// not downgraded to a suspend. Ended jobs refuse both with
// job.ErrWrongState.
func (s *Store) Request(ctx context.Context, id string, a job.Action, reason string, now time.Time, held func(*job.Job) bool) (*job.Job, error) {
	if a != job.ActionSuspend && a != job.ActionStop {
		return nil, fmt.Errorf("request on job %s: unknown action %q", id, a)
	}
	var out *job.Job
	err := s.write(ctx, func(w *writer) error {
		j, err := w.loadJob(id)
		if err != nil {
			return err
		}
		if j.State.Ended() {
			return wrongState(string(a), j, now)
		}
		nowN := nanos(now)
		if held != nil && held(j) {
			req := a
			if j.Request == job.ActionStop {
				req = job.ActionStop
			}
			why := j.Reason
			if reason != "" {
				why = reason
			}
			if _, err := w.exec(w.setRequest, string(req), why, nowN, id); err != nil {
				return fmt.Errorf("%s job %s: %w", a, id, err)
			}
			j.Request, j.Reason, j.Updated = req, why, now
			out = j
			return nil
		}
		to, ended := job.Suspended, int64(0)
		if a == job.ActionStop {
			to, ended = job.Stopped, nowN
		} else if j.State == job.Suspended {
			out = j
			return nil
		}
		if _, err := w.exec(w.setState, string(to), reason, ended, nowN, id); err != nil {
			return fmt.Errorf("%s job %s: %w", a, id, err)
		}
		j.State, j.Owner, j.LeaseUntil, j.Request = to, "", time.Time{}, job.ActionNone
		j.Reason, j.Ended, j.Updated = reason, fromNanos(ended), now
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
// Ended; moving to another clears it.
func (s *Store) SetState(ctx context.Context, id string, from []job.State, to job.State, now time.Time) (*job.Job, error) {
	if to == job.Running || to == job.Interrupted || to == "" {
		return nil, fmt.Errorf("set job %s %q: a job becomes running only by a claim", id, to)
	}
	var out *job.Job
	err := s.write(ctx, func(w *writer) error {
		j, err := w.loadJob(id)
		if err != nil {
			return err
		}
		nowN := nanos(now)
		if heldBy(j, nowN) {
			return s.heldErr("set state of", j)
		}
		if !slices.Contains(from, j.EffectiveState(now)) {
			return wrongState("set state of", j, now)
		}
		var ended int64
		if to.Ended() {
			ended = nowN
		}
		if _, err := w.exec(w.setState, string(to), j.Reason, ended, nowN, id); err != nil {
			return fmt.Errorf("set job %s %s: %w", id, to, err)
		}
		j.State, j.Owner, j.LeaseUntil, j.Request = to, "", time.Time{}, job.ActionNone
		j.Ended, j.Updated = fromNanos(ended), now
		out = j
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AppendRecords stores output and log records, ignoring those whose
// (job, stream, key) exists.
func (s *Store) AppendRecords(ctx context.Context, recs []job.Record) error {
	if len(recs) == 0 {
		return nil
	}
	args := make([][]any, len(recs))
	for i := range recs {
		if recs[i].JobID == "" || recs[i].Key == "" {
			return errors.New("append records: a record has no job or no key")
		}
		args[i] = recordArgs(&recs[i])
	}
	return s.write(ctx, func(w *writer) error {
		for i, a := range args {
			if _, err := w.exec(w.insRecord, a...); err != nil {
				if extendedCode(err) == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY {
					return fmt.Errorf("append records: job %s: %w", recs[i].JobID, job.ErrNotFound)
				}
				return fmt.Errorf("append records to job %s: %w", recs[i].JobID, err)
			}
		}
		return nil
	})
}

// Signal delivers a signal to a job waiting for its name and makes the job
// queued. It sets sig.ID, and sig.Time when zero.
func (s *Store) Signal(ctx context.Context, sig *job.Signal) (*job.Job, error) {
	if sig.Name == "" {
		return nil, fmt.Errorf("signal job %s: no signal name", sig.JobID)
	}
	if sig.Time.IsZero() {
		sig.Time = time.Now()
	}
	var out *job.Job
	err := s.write(ctx, func(w *writer) error {
		j, err := w.loadJob(sig.JobID)
		if err != nil {
			return err
		}
		// A job waiting for several signals (parallel branches) is queued
		// by the first and still takes the others until it runs.
		waiting := j.State == job.Waiting || (j.State == job.Queued && len(j.WaitFor) > 0)
		if waiting && slices.Contains(j.WaitFor, sig.Name) {
			var pending int
			if err := w.conn.QueryRowContext(w.ctx, "SELECT count(*) FROM signals WHERE job_id = ? AND name = ?", sig.JobID, sig.Name).Scan(&pending); err != nil {
				return fmt.Errorf("signal %s to job %s: %w", sig.Name, sig.JobID, err)
			}
			if pending > 0 {
				return fmt.Errorf("signal %s to job %s: it is %s, and signal %s was delivered already and not taken yet: %w", sig.Name, j.ID, j.State, sig.Name, job.ErrNotWaiting)
			}
		}
		if !waiting || !slices.Contains(j.WaitFor, sig.Name) {
			waits := ""
			if len(j.WaitFor) > 0 {
				waits = " for " + strings.Join(j.WaitFor, ", ")
			}
			st := j.EffectiveState(sig.Time)
			if st == job.Waiting {
				return fmt.Errorf("signal %s to job %s: it is waiting%s, not for %s: %w", sig.Name, j.ID, waits, sig.Name, job.ErrNotWaiting)
			}
			return fmt.Errorf("signal %s to job %s: it is %s: %w", sig.Name, j.ID, st, job.ErrNotWaiting)
		}
		res, err := w.exec(w.insSignal, sig.JobID, sig.Name, jsonText(sig.Payload), sig.Sender, nanos(sig.Time))
		if err != nil {
			return fmt.Errorf("signal %s to job %s: %w", sig.Name, sig.JobID, err)
		}
		sigID, err := res.LastInsertId()
		if err != nil {
			return fmt.Errorf("signal %s to job %s: %w", sig.Name, sig.JobID, err)
		}
		nowN := nanos(sig.Time) // the engine's clock, when it set the time
		if _, err := w.exec(w.setQueued, nowN, sig.JobID); err != nil {
			return fmt.Errorf("signal %s to job %s: %w", sig.Name, sig.JobID, err)
		}
		sig.ID = sigID
		j.State, j.Updated = job.Queued, time.Unix(0, nowN)
		out = j
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteJob removes a job with its journal, records, signals and
// children, through the schema's cascading foreign keys.
func (s *Store) DeleteJob(ctx context.Context, id string) error {
	return s.write(ctx, func(w *writer) error {
		res, err := w.exec(w.delJob, id)
		if err != nil {
			return fmt.Errorf("delete job %s: %w", id, err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return fmt.Errorf("job %s: %w", id, job.ErrNotFound)
		}
		return nil
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
	files := src.Files
	if files == nil {
		files = map[string]string{}
	}
	b, err := json.Marshal(files)
	if err != nil {
		return nil, fmt.Errorf("register workflow %s: %w", name, err)
	}
	var out *job.Workflow
	err = s.write(ctx, func(w *writer) error {
		if _, err := w.exec(w.insSource, src.Digest, src.Entry, string(b)); err != nil {
			return fmt.Errorf("register workflow %s: store source: %w", name, err)
		}
		wf, err := scanWorkflow(w.wfGet.QueryRowContext(w.ctx, name))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			wf = &job.Workflow{Name: name, Digest: src.Digest, Entry: src.Entry, Version: 1, Created: now, Updated: now}
			if _, err := w.exec(w.wfIns, name, src.Digest, src.Entry, 1, nanos(now), nanos(now)); err != nil {
				return fmt.Errorf("register workflow %s: %w", name, err)
			}
		case err != nil:
			return fmt.Errorf("register workflow %s: %w", name, err)
		case wf.Digest != src.Digest:
			wf.Digest, wf.Entry, wf.Version, wf.Updated = src.Digest, src.Entry, wf.Version+1, now
			if _, err := w.exec(w.wfUpd, wf.Digest, wf.Entry, wf.Version, nanos(now), name); err != nil {
				return fmt.Errorf("register workflow %s: %w", name, err)
			}
		}
		out = wf
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// DeleteWorkflow removes a registered workflow. Its sources stay for the
// jobs that replay them.
func (s *Store) DeleteWorkflow(ctx context.Context, name string) error {
	return s.write(ctx, func(w *writer) error {
		res, err := w.exec(w.wfDel, name)
		if err != nil {
			return fmt.Errorf("delete workflow %s: %w", name, err)
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return fmt.Errorf("workflow %s: %w", name, job.ErrNotFound)
		}
		return nil
	})
}
