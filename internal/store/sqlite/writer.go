package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// request is one write waiting for the writer. fn runs inside a write
// transaction on the writer's connection; it may run twice (see runBatch),
// so it must set its results only from what it reads in the transaction.
type request struct {
	ctx context.Context
	fn  func(w *writer) error
	err chan error
}

// write runs fn in a write transaction and returns when it has committed
// (or failed). Writes waiting at the same time share one transaction.
func (s *Store) write(ctx context.Context, fn func(w *writer) error) error {
	r := &request{ctx: ctx, fn: fn, err: make(chan error, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return fmt.Errorf("write to store %s: %w", s.path, errClosed)
	}
	// With nothing queued and the writer idle, the caller runs its write
	// itself: a sequential writer (one job under --persist always) saves
	// the two goroutine handoffs per write. Writes that come meanwhile
	// queue and commit together after it, as they would behind the writer
	// goroutine's transaction.
	if len(s.reqs) == 0 && s.wmu.TryLock() {
		one := [1]*request{r}
		s.w.runBatch(one[:])
		s.wmu.Unlock()
		s.mu.RUnlock()
		return <-r.err
	}
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		s.mu.RUnlock()
		return ctx.Err()
	}
	s.mu.RUnlock()
	// Once queued, the request is waited for even if ctx ends: returning
	// early would leave the caller not knowing whether it was written.
	// The writer drops it unrun if ctx has ended by the time it starts.
	return <-r.err
}

// writeLoop is the writer goroutine. It takes every request waiting, up to
// MaxBatch, and commits them together.
func (s *Store) writeLoop(w *writer) {
	defer close(s.done)
	batch := make([]*request, 0, s.opt.MaxBatch)
	for r := range s.reqs {
		batch = append(batch[:0], r)
		// Taken before filling, so that the requests queued behind a
		// caller's own write (see write) join this batch.
		s.wmu.Lock()
	fill:
		for len(batch) < s.opt.MaxBatch {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		w.runBatch(batch)
		s.wmu.Unlock()
		clear(batch) // let the requests' closures be collected
	}
	s.wErr = w.close()
}

// writer owns the write connection and its prepared statements. Only the
// holder of Store.wmu uses it (and Open, before the writer goroutine
// starts): the writer goroutine, or a caller writing on its own.
type writer struct {
	s    *Store
	ctx  context.Context // statements run to completion whatever the callers' contexts
	conn *sql.Conn
	errs []error // per-request results of the batch being run

	begin, commit, rollback         *sql.Stmt
	savepoint, release, rollbackTo  *sql.Stmt
	jobByID, hasJob, hasSource      *sql.Stmt
	insSource, insJob, claim        *sql.Stmt
	upsertStep, insRecord           *sql.Stmt
	delSignal, insSignal, setQueued *sql.Stmt
	setRequest, setState            *sql.Stmt
	renew, requests, delJob         *sql.Stmt
	wfGet, wfIns, wfUpd, wfDel      *sql.Stmt

	// apply holds Apply's UPDATE statements by the set of columns they
	// change, prepared on first use: an update names only the columns it
	// changes, and there are few combinations in practice.
	apply map[applyMask]*sql.Stmt
}

// prepare checks and migrates the file on conn, then prepares the writer's
// statements on it.
func (s *Store) prepare(ctx context.Context, conn *sql.Conn) (*writer, error) {
	if err := s.migrate(ctx, conn); err != nil {
		return nil, err
	}
	w := &writer{s: s, ctx: context.Background(), conn: conn, apply: make(map[applyMask]*sql.Stmt)}
	stmts := []struct {
		p *(*sql.Stmt)
		q string
	}{
		{&w.begin, "BEGIN IMMEDIATE"},
		{&w.commit, "COMMIT"},
		{&w.rollback, "ROLLBACK"},
		{&w.savepoint, "SAVEPOINT request"},
		{&w.release, "RELEASE request"},
		{&w.rollbackTo, "ROLLBACK TO request"},
		{&w.jobByID, "SELECT " + jobColumns + " FROM jobs WHERE id = ?"},
		{&w.hasJob, "SELECT 1 FROM jobs WHERE id = ?"},
		{&w.hasSource, "SELECT 1 FROM sources WHERE digest = ?"},
		{&w.insSource, "INSERT INTO sources (digest, entry, files) VALUES (?, ?, ?) ON CONFLICT (digest) DO NOTHING"},
		{&w.insJob, "INSERT INTO jobs (" + jobColumns + ") VALUES (" + jobPlaceholders + ")"},
		{&w.claim, `UPDATE jobs SET state = 'running', owner = ?, lease_until = ?, runs = runs + 1,
			started = CASE WHEN started = 0 THEN ? ELSE started END, ended = 0, request = '', updated = ?
			WHERE id = ?`},
		{&w.upsertStep, `INSERT INTO steps (job_id, ` + stepColumns + `) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (job_id, key) DO UPDATE SET activity = excluded.activity, digest = excluded.digest,
			status = excluded.status, result = excluded.result, error = excluded.error, data = excluded.data,
			attempts = excluded.attempts, host = excluded.host, position = excluded.position,
			started = excluded.started, ended = excluded.ended, engine = excluded.engine`},
		{&w.insRecord, `INSERT INTO records (job_id, stream, key, time, host, value, text) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (job_id, stream, key) DO NOTHING`},
		{&w.delSignal, "DELETE FROM signals WHERE id = ? AND job_id = ?"},
		{&w.insSignal, "INSERT INTO signals (job_id, name, payload, sender, time) VALUES (?, ?, ?, ?, ?)"},
		{&w.setQueued, "UPDATE jobs SET state = 'queued', updated = ? WHERE id = ?"},
		{&w.setRequest, "UPDATE jobs SET request = ?, reason = ?, updated = ? WHERE id = ?"},
		{&w.setState, `UPDATE jobs SET state = ?, owner = '', lease_until = 0, request = '', reason = ?, ended = ?, updated = ?
			WHERE id = ?`},
		{&w.renew, "UPDATE jobs SET lease_until = ? WHERE owner = ? AND owner <> ''"},
		{&w.requests, "SELECT id, request FROM jobs WHERE owner = ? AND owner <> '' AND request <> ''"},
		{&w.delJob, "DELETE FROM jobs WHERE id = ?"},
		{&w.wfGet, "SELECT " + workflowColumns + " FROM workflows WHERE name = ?"},
		{&w.wfIns, "INSERT INTO workflows (" + workflowColumns + ") VALUES (?, ?, ?, ?, ?, ?)"},
		{&w.wfUpd, "UPDATE workflows SET digest = ?, entry = ?, version = ?, updated = ? WHERE name = ?"},
		{&w.wfDel, "DELETE FROM workflows WHERE name = ?"},
	}
	for _, st := range stmts {
		p, err := conn.PrepareContext(ctx, st.q)
		if err != nil {
			w.close()
			return nil, s.openErr(fmt.Errorf("prepare %q: %w", firstLine(st.q), err))
		}
		*st.p = p
	}
	return w, nil
}

func firstLine(q string) string {
	q, _, _ = strings.Cut(q, "\n")
	return q
}

// close closes the statements and the connection.
func (w *writer) close() error {
	var errs []error
	for _, st := range []*sql.Stmt{
		w.begin, w.commit, w.rollback, w.savepoint, w.release, w.rollbackTo,
		w.jobByID, w.hasJob, w.hasSource, w.insSource, w.insJob, w.claim,
		w.upsertStep, w.insRecord, w.delSignal, w.insSignal, w.setQueued,
		w.setRequest, w.setState, w.renew, w.requests, w.delJob,
		w.wfGet, w.wfIns, w.wfUpd, w.wfDel,
	} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	for _, st := range w.apply {
		errs = append(errs, st.Close())
	}
	errs = append(errs, w.conn.Close())
	return errors.Join(errs...)
}

func (w *writer) exec(st *sql.Stmt, args ...any) (sql.Result, error) {
	return st.ExecContext(w.ctx, args...)
}

// runBatch runs the requests in one transaction. Each runs inside a
// savepoint, so that one that fails (a lost lease, a missing job) is
// rolled back alone and the others still commit. If the transaction itself
// fails (the commit, or an error that ends the transaction), every request
// runs again in a transaction of its own, so that a bad request fails
// alone.
func (w *writer) runBatch(batch []*request) {
	live := batch[:0]
	for _, r := range batch {
		// A caller that gave up before its write started gets no write.
		if err := r.ctx.Err(); err != nil {
			r.err <- err
			continue
		}
		live = append(live, r)
	}
	switch len(live) {
	case 0:
		return
	case 1:
		live[0].err <- w.runAlone(live[0])
		return
	}

	if _, err := w.exec(w.begin); err != nil {
		// Nothing ran: a locked or read-only store fails every request the
		// same way, and retrying each would wait out the busy timeout once
		// per request.
		err = w.s.storeErr("write to store", err)
		for _, r := range live {
			r.err <- err
		}
		return
	}
	w.errs = append(w.errs[:0], make([]error, len(live))...)
	broken := false
	for i, r := range live {
		if _, err := w.exec(w.savepoint); err != nil {
			broken = true
			break
		}
		if err := r.fn(w); err != nil {
			w.errs[i] = w.s.mapErr(err)
			if _, err := w.exec(w.rollbackTo); err != nil {
				broken = true
				break
			}
		}
		if _, err := w.exec(w.release); err != nil {
			broken = true
			break
		}
	}
	if !broken {
		if _, err := w.exec(w.commit); err == nil {
			for i, r := range live {
				r.err <- w.errs[i]
			}
			return
		}
	}
	// The transaction may already be gone (SQLite rolls back by itself on
	// some errors), so the rollback's own error says nothing.
	_, _ = w.exec(w.rollback)
	for _, r := range live {
		r.err <- w.runAlone(r)
	}
}

// runAlone runs one request in its own transaction.
func (w *writer) runAlone(r *request) error {
	if _, err := w.exec(w.begin); err != nil {
		return w.s.storeErr("write to store", err)
	}
	if err := r.fn(w); err != nil {
		_, _ = w.exec(w.rollback)
		return w.s.mapErr(err)
	}
	if _, err := w.exec(w.commit); err != nil {
		_, _ = w.exec(w.rollback)
		return w.s.storeErr("commit to store", err)
	}
	return nil
}

// mapErr maps SQLite's errors and lets drover's own errors through.
func (s *Store) mapErr(err error) error {
	if sqliteCode(err) != 0 {
		return s.storeErr("write to store", err)
	}
	return err
}
