package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// outcome marks an error that is a call's answer (job.ErrLeaseLost,
// job.ErrNotFound...) rather than a failure of the database: the
// statements that produced it wrote nothing, and the transaction goes on.
type outcome struct{ err error }

func (o outcome) Error() string { return o.err.Error() }
func (o outcome) Unwrap() error { return o.err }

func fail(err error) error { return outcome{err} }

// answer returns the call's answer inside err, if err is one.
func answer(err error) (error, bool) {
	var o outcome
	if errors.As(err, &o) {
		return o.err, true
	}
	return nil, false
}

// request is one write waiting for a writer. build queues its statements
// on the batch; read reads their results in the same order. The statements
// must need no answer from the server between them: whatever decides
// whether they change anything is in their SQL. A request may run twice
// (in its batch and then alone, see runBatch), so read must set the
// caller's results only from what it reads.
type request struct {
	ctx context.Context
	op  string // what the caller is doing, for errors of the database
	// job is the job whose row the request locks, if any: a batch runs
	// its requests in the order of their jobs.
	job   string
	build func(b *pgx.Batch, now time.Time)
	read  func(br pgx.BatchResults) error
	// mapErr turns an error of one of the request's statements, run
	// alone, into the caller's error (a foreign key into job.ErrNotFound);
	// nil returns it wrapped with op.
	mapErr func(err error) error
	// due says the request may make a job due: its transaction notifies
	// the listeners.
	due bool
	err chan error
}

// write queues a request and waits for its outcome. Requests waiting at
// the same time share one transaction.
func (s *Store) write(ctx context.Context, r *request) error {
	r.ctx = ctx
	r.err = make(chan error, 1)
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return fmt.Errorf("%s (store %s): %w", r.op, s.name, errClosed)
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

// writeLoop is a writer goroutine. It takes every request waiting, up to
// MaxBatch, and commits them together.
func (s *Store) writeLoop() {
	batch := make([]*request, 0, s.opt.MaxBatch)
	for r := range s.reqs {
		batch = append(batch[:0], r)
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
		s.runBatch(batch)
		clear(batch) // let the requests' closures be collected
	}
}

// runBatch runs the requests in one transaction. When a statement fails,
// which aborts the transaction, every request runs again in a transaction
// of its own, so that a bad request fails alone.
func (s *Store) runBatch(batch []*request) {
	live := make([]*request, 0, len(batch))
	for _, r := range batch {
		// A caller that gave up before its write started gets no write.
		if err := r.ctx.Err(); err != nil {
			r.err <- err
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	// The requests of a batch are concurrent, so any order is one they
	// could have come in. In the order of their jobs, two batches (of two
	// writers, or two servers) that lock the same job rows lock them in
	// the same order, and never deadlock, which PostgreSQL would resolve
	// only after deadlock_timeout by failing one of them.
	slices.SortStableFunc(live, func(a, b *request) int { return strings.Compare(a.job, b.job) })
	if len(live) > 1 {
		res, live2, err := s.execTx(live)
		var se *stmtError
		if !errors.As(err, &se) {
			s.deliver(live2, res, err)
			return
		}
		live = live2
	}
	for _, r := range live {
		res, rs, err := s.execTx([]*request{r})
		var se *stmtError
		if errors.As(err, &se) {
			err = se.err
			if r.mapErr != nil {
				err = s.redact(r.mapErr(err))
			} else {
				err = s.dbErr(r.op, err)
			}
			res, err = []error{err}, nil
		}
		s.deliver(rs, res, err)
	}
}

// deliver sends each request its result, or all of them the error of
// their transaction.
func (s *Store) deliver(reqs []*request, res []error, err error) {
	for i, r := range reqs {
		switch {
		case err == nil:
			r.err <- res[i]
		case errors.Is(err, errCanceled):
			r.err <- r.ctx.Err()
		default:
			r.err <- s.dbErr(r.op, err)
		}
	}
}

// stmtError is a statement's error that aborted a transaction: the
// request that ran it is at fault, and the transaction did not commit.
type stmtError struct{ err error }

func (e *stmtError) Error() string { return e.err.Error() }
func (e *stmtError) Unwrap() error { return e.err }

// errCanceled reports that every request of a transaction being retried
// gave up; none was written.
var errCanceled = errors.New("canceled before it was written")

// execTx runs the requests in one transaction, retrying with backoff while
// it certainly did not commit and the database is unreachable. It returns
// the requests it ran (those whose callers gave up while it retried are
// answered and dropped) with their results, or an error: *stmtError, an
// error wrapping ErrOutcomeUnknown, or the last connection error.
func (s *Store) execTx(reqs []*request) ([]error, []*request, error) {
	deadline := time.Now().Add(s.opt.RetryFor)
	for attempt := 1; ; attempt++ {
		res, err, retry := s.tryTx(reqs)
		if !retry {
			if err == nil {
				s.reachable()
			}
			return res, reqs, err
		}
		s.failed(reqs[0].op, attempt, err)
		if s.opt.RetryFor < 0 {
			return nil, reqs, err
		}
		if time.Now().After(deadline) {
			return nil, reqs, fmt.Errorf("gave up after %d attempts in %v: %w", attempt, s.opt.RetryFor, err)
		}
		// The retries wait for the callers that still want the write.
		ctx, cancel := contextOf(reqs)
		ok := backoff(ctx, attempt, nil)
		cancel()
		kept := reqs[:0:0]
		for _, r := range reqs {
			if r.ctx.Err() != nil {
				r.err <- r.ctx.Err()
				continue
			}
			kept = append(kept, r)
		}
		reqs = kept
		if !ok || len(reqs) == 0 {
			return nil, reqs, errCanceled
		}
	}
}

// contextOf is a context that ends when every request's context has.
func contextOf(reqs []*request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for _, r := range reqs {
			select {
			case <-r.ctx.Done():
			case <-ctx.Done():
				return
			}
		}
		cancel()
	}()
	return ctx, cancel
}

// tryTx runs the requests in one transaction once: BEGIN and every
// statement go in one pipeline, COMMIT follows when all have run. retry
// reports that the transaction certainly did not commit and failed for a
// reason that may pass (a lost connection, a deadlock, a server shutting
// down).
func (s *Store) tryTx(reqs []*request) (res []error, err error, retry bool) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.WriteTimeout)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err), connectRetryable(err)
	}
	defer conn.Release()

	b := &pgx.Batch{}
	b.Queue("BEGIN")
	// The transaction's id lets commit ask whether it committed when the
	// answer to COMMIT is lost.
	b.Queue("SELECT txid_current()")
	now := time.Now()
	for _, r := range reqs {
		r.build(b, now)
	}
	br := conn.SendBatch(ctx, b)
	res = make([]error, len(reqs))
	var xid int64
	err = func() error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		if err := br.QueryRow().Scan(&xid); err != nil {
			return err
		}
		for i, r := range reqs {
			err := r.read(br)
			if a, ok := answer(err); ok {
				res[i] = a
			} else if err != nil {
				return err
			}
		}
		return nil
	}()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// COMMIT was never sent: whatever failed, nothing is stored.
		rollback(conn)
		switch {
		case lost(conn, err):
			return nil, err, true
		case errors.Is(err, context.DeadlineExceeded):
			return nil, fmt.Errorf("not written: the transaction took longer than %v: %w", s.opt.WriteTimeout, err), false
		}
		return nil, &stmtError{err}, false
	}

	// Listeners hear of due jobs only from requests that did make them
	// due: a refused signal wakes nobody.
	notify := false
	for i, r := range reqs {
		notify = notify || r.due && res[i] == nil
	}
	if err, retry := s.commit(ctx, conn, notify, xid); err != nil {
		return nil, err, retry
	}
	return res, nil, false
}

// commit commits the transaction xid open on conn, first sending NOTIFY
// drover_due in it when notify is set: in the same pipeline, so that it
// costs no round trip. retry reports that it certainly did not commit and
// may be run again. When the answer to COMMIT is lost, resolve asks the
// server what became of the transaction; if it cannot tell, the error
// wraps ErrOutcomeUnknown.
func (s *Store) commit(ctx context.Context, conn *pgxpool.Conn, notify bool, xid int64) (err error, retry bool) {
	pid := conn.Conn().PgConn().PID()
	b := &pgx.Batch{}
	if notify {
		b.Queue("SELECT pg_notify($1, $2)", notifyChannel, s.schema)
	}
	b.Queue("COMMIT")
	br := conn.SendBatch(ctx, b)
	if notify {
		if _, err := br.Exec(); err != nil {
			br.Close()
			switch {
			case pgCode(err) != "" && !conn.Conn().IsClosed():
				// The server refused the NOTIFY, which aborted the
				// transaction: COMMIT became a no-op.
				rollback(conn)
				return fmt.Errorf("notify %s: %w", notifyChannel, err), retryableCode(pgCode(err))
			case pgconn.SafeToRetry(err):
				return fmt.Errorf("commit: %w", err), true
			}
			return s.resolve(xid, pid, err)
		}
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	switch {
	case err == nil && tag.String() == "COMMIT":
		return nil, false
	case err == nil:
		// The server rolled back (it answers COMMIT of a failed
		// transaction with ROLLBACK); nothing before failed, so this is
		// not expected, but it certainly did not commit.
		return fmt.Errorf("commit: the server rolled the transaction back (%s)", tag), true
	case pgconn.SafeToRetry(err):
		// Nothing of the COMMIT was sent.
		return fmt.Errorf("commit: %w", err), true
	case (pgCode(err) == "40001" || pgCode(err) == "40P01") && !conn.Conn().IsClosed():
		return fmt.Errorf("commit: %w", err), true
	}
	// The COMMIT may have reached the server, which may have committed
	// before the connection, or the server, went away. Even an error from
	// the server does not say: a backend told to terminate may report it
	// after its commit is durable.
	return s.resolve(xid, pid, err)
}

// resolve finds out whether transaction xid, whose COMMIT's answer was
// lost (cause), committed: txid_status is PostgreSQL's answer to exactly
// this question. The server may be restarting, so it asks again with
// backoff for RetryFor. A transaction still in progress belongs to a
// backend that has not noticed its client is gone: resolve terminates that
// backend (pid, checked to still run xid), which rolls the transaction
// back unless its commit was already under way.
func (s *Store) resolve(xid int64, pid uint32, cause error) (err error, retry bool) {
	deadline := time.Now().Add(s.opt.RetryFor)
	for attempt := 1; ; attempt++ {
		status, err := s.txStatus(xid, pid)
		switch {
		case err != nil:
			s.failed("find out whether a commit whose answer was lost committed", attempt, err)
		case status == "committed":
			s.log.Info("a write whose commit was not confirmed did commit", "xid", xid, "err", s.redact(cause))
			return nil, false
		case status == "aborted":
			return fmt.Errorf("commit: the transaction was rolled back: %w", cause), true
		case status == "":
			// Too old for the server to remember: cannot happen within
			// RetryFor, but then nobody knows.
			return fmt.Errorf("%w: %w", ErrOutcomeUnknown, cause), false
		}
		if s.opt.RetryFor < 0 || time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("transaction %d is still %s", xid, status)
			}
			return fmt.Errorf("%w: %w (finding out: %w)", ErrOutcomeUnknown, cause, err), false
		}
		backoff(context.Background(), attempt, nil)
	}
}

// txStatus is txid_status(xid) on a new connection, after terminating the
// backend pid if it still runs the transaction.
func (s *Store) txStatus(xid int64, pid uint32) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var status *string
	err := s.pool.QueryRow(ctx, `SELECT txid_status($1)`, xid).Scan(&status)
	if err != nil || status == nil || *status != "in progress" {
		if status == nil {
			return "", err
		}
		return *status, err
	}
	// backend_xid is the 32-bit xid; txid_current adds the epoch above it.
	_, err = s.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE pid = $1 AND backend_xid::text::bigint = $2 % 4294967296`, int32(pid), xid)
	return *status, err
}

// lost reports whether err, met before COMMIT, is a failure of the
// connection or the server rather than of the statements, so that the
// transaction may run again. The write timeout is neither: running again
// would likely wait as long.
func lost(conn *pgxpool.Conn, err error) bool {
	if retryableCode(pgCode(err)) {
		return true
	}
	return pgCode(err) == "" && conn.Conn().IsClosed() && !errors.Is(err, context.DeadlineExceeded)
}

func rollback(conn *pgxpool.Conn) {
	if conn.Conn().IsClosed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A failed rollback leaves the connection in a transaction, and the
	// pool closes such a connection when it is released.
	_, _ = conn.Exec(ctx, "ROLLBACK")
}

func (s *Store) isClosed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.closed
}
