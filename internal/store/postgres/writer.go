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
// whether they change anything is in their SQL, so that a request read
// refuses has written nothing, and COMMIT can follow in the same pipeline.
// A statement that makes a job due calls pg_notify only for the rows it
// changed (see notifyCall). A request may run twice
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
	err    chan error
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

// txnSQL reads what resolve needs to know of a transaction: its id, and
// when the server started.
const txnSQL = "SELECT txid_current(), pg_postmaster_start_time()"

// tryTx runs the requests in one transaction once, in one round trip:
// BEGIN, txid_current, every request's statements and COMMIT go in one
// pipeline. That is safe because whatever refuses a request is in its SQL
// (see request): a refused request changes nothing, so the others commit
// whatever the answers say, and a NOTIFY sent by a statement that made a
// job due is delivered only if it commits. A statement that fails makes
// the server skip the rest of the pipeline, COMMIT included. retry reports
// that the transaction certainly did not commit and failed for a reason
// that may pass (a lost connection, a deadlock, a server shutting down).
func (s *Store) tryTx(reqs []*request) (res []error, err error, retry bool) {
	ctx, cancel := context.WithTimeout(context.Background(), s.opt.WriteTimeout)
	defer cancel()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err), connectRetryable(err)
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	t := txn{pid: pc.PID()}

	b := &pgx.Batch{}
	b.Queue("BEGIN")
	// The transaction's id lets resolve ask whether it committed when the
	// answers are lost.
	b.Queue(txnSQL)
	now := time.Now()
	for _, r := range reqs {
		r.build(b, now)
	}
	b.Queue("COMMIT")
	s.ending.Delete(pc)
	br := conn.SendBatch(ctx, b)
	res = make([]error, len(reqs))
	var (
		haveXid bool
		read    int // requests whose answers were read
	)
	err = func() error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		if err := br.QueryRow().Scan(&t.xid, &t.started); err != nil {
			return err
		}
		haveXid = true
		for i, r := range reqs {
			err := r.read(br)
			if a, ok := answer(err); ok {
				res[i] = a
			} else if err != nil {
				return err
			}
			read = i + 1
		}
		return nil
	}()
	if err == nil {
		return s.commit(conn, br, t, res)
	}
	br.Close()
	_, ending := s.ending.LoadAndDelete(pc)
	closed := pc.IsClosed()
	switch {
	case pgCode(err) != "" || ending:
		// The server answered a statement before COMMIT with an error, or
		// said it was ending the session there; answers come in order, so
		// it ran nothing after that statement, COMMIT included.
		rollback(conn)
		if closed || retryableCode(pgCode(err)) {
			return nil, err, true
		}
		return nil, &stmtError{err}, false
	case pgconn.SafeToRetry(err):
		// Nothing was sent.
		return nil, err, true
	}
	// The connection failed, the write timed out, or an answer could not
	// be read: the server may have run the pipeline to its COMMIT. Ask it.
	if !closed && pc.TxStatus() != 'I' {
		rollback(conn)
	}
	var rerr error
	if haveXid {
		rerr, retry = s.resolve(t, err)
	} else {
		rerr, retry = s.resolvePID(t.pid, err)
	}
	if rerr != nil {
		if retry && errors.Is(err, context.DeadlineExceeded) {
			// Running it again would likely wait as long.
			return nil, fmt.Errorf("not written: the transaction took longer than %v: %w", s.opt.WriteTimeout, err), false
		}
		return nil, rerr, retry
	}
	// It committed, with the requests whose answers were not read: each
	// of them either wrote or was refused, and nobody can tell which.
	for i := read; i < len(reqs); i++ {
		res[i] = fmt.Errorf("%s: %w: it committed, but its answer was lost: %w", reqs[i].op, ErrOutcomeUnknown, s.redact(err))
	}
	return res, nil, false
}

// commit reads the answer to COMMIT, the last of br's statements, whose
// others have all been read; res are the requests' answers. retry reports
// that it certainly did not commit and may be run again. When the answer
// is lost, resolve asks the server what became of transaction t; if it
// cannot tell, the error wraps ErrOutcomeUnknown.
func (s *Store) commit(conn *pgxpool.Conn, br pgx.BatchResults, t txn, res []error) ([]error, error, bool) {
	tag, err := br.Exec()
	cerr := br.Close()
	switch {
	case err == nil && tag.String() == "COMMIT":
		return res, nil, false
	case err == nil && cerr == nil:
		// The server rolled back (it answers COMMIT of a failed
		// transaction with ROLLBACK); nothing before failed, so this is
		// not expected, but it certainly did not commit.
		return nil, fmt.Errorf("commit: the server rolled the transaction back (%s)", tag), true
	case err == nil:
		err = cerr
	}
	if (pgCode(err) == "40001" || pgCode(err) == "40P01") && !conn.Conn().IsClosed() {
		return nil, fmt.Errorf("commit: %w", err), true
	}
	// The server may have committed before the connection, or the server,
	// went away. Even an error from the server does not say: a backend
	// told to terminate may report it after its commit is durable.
	if err, retry := s.resolve(t, err); err != nil {
		return nil, err, retry
	}
	return res, nil, false
}

// resolvePID is resolve for a transaction whose id was not read: the id
// is asked of backend pid, which has it while the transaction runs. Once
// the backend has ended it, or gone, nobody can tell whether it committed.
func (s *Store) resolvePID(pid uint32, cause error) (err error, retry bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// backend_xid is the 32-bit xid; the epoch above it is the current
	// one, or the one before if the counter wrapped since.
	t := txn{pid: pid}
	err = s.pool.QueryRow(ctx, `SELECT x + ((c >> 32) - CASE WHEN x > c & 4294967295 THEN 1 ELSE 0 END) * 4294967296, pg_postmaster_start_time()
		FROM (SELECT backend_xid::text::bigint AS x FROM pg_stat_activity WHERE pid = $1 AND backend_xid IS NOT NULL) a,
			(SELECT txid_snapshot_xmax(txid_current_snapshot()) AS c) n`, int32(pid)).Scan(&t.xid, &t.started)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, cause), false
	case err != nil:
		return fmt.Errorf("%w: %w (finding out: %w)", ErrOutcomeUnknown, cause, err), false
	}
	return s.resolve(t, cause)
}

// txn names a transaction for resolve: its id, the backend that runs it,
// and when the server that runs it started.
type txn struct {
	xid     int64
	pid     uint32
	started time.Time // pg_postmaster_start_time()
}

// resolve finds out whether transaction t, whose answers were lost
// (cause), committed: txid_status is PostgreSQL's answer to exactly this
// question. The server may be restarting, so it asks again with backoff
// for RetryFor. A transaction still in progress belongs to a backend that
// has not noticed its client is gone: resolve terminates that backend
// (t.pid, checked to still run t.xid), which rolls the transaction back
// unless its commit was already under way.
func (s *Store) resolve(t txn, cause error) (err error, retry bool) {
	deadline := time.Now().Add(s.opt.RetryFor)
	for attempt := 1; ; attempt++ {
		status, err := s.txStatus(t)
		switch {
		case err != nil:
			s.failed("find out whether a commit whose answer was lost committed", attempt, err)
		case status == "committed":
			s.log.Info("a write whose commit was not confirmed did commit", "xid", t.xid, "err", s.redact(cause))
			return nil, false
		case status == "aborted":
			return fmt.Errorf("commit: the transaction was rolled back: %w", cause), true
		case status == "reused":
			return fmt.Errorf("%w: %w (the server crashed and restarted since, and may have given the transaction's id to another)", ErrOutcomeUnknown, cause), false
		case status == "":
			// Too old for the server to remember: cannot happen within
			// RetryFor, but then nobody knows.
			return fmt.Errorf("%w: %w", ErrOutcomeUnknown, cause), false
		}
		if s.opt.RetryFor < 0 || time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("transaction %d is still %s", t.xid, status)
			}
			return fmt.Errorf("%w: %w (finding out: %w)", ErrOutcomeUnknown, cause, err), false
		}
		backoff(context.Background(), attempt, nil)
	}
}

// txStatus is txid_status of t on a new connection, after terminating the
// backend t.pid if it still runs the transaction; "reused" when that
// status may be another transaction's.
//
// A server that crashes forgets the ids it gave to transactions none of
// whose WAL was flushed, and gives them again after its restart. Such a
// transaction did not commit, but txid_status would answer for the
// transaction that has its id now. So once the server has restarted since
// t began, only "aborted" is believed as it is, unless the latest
// checkpoint is the one the restart made: the shutdown checkpoint of a
// clean stop or the checkpoint that ended crash recovery (both have their
// redo point at themselves, where an online checkpoint under writes does
// not). Its next id is above every id the old server may have given a
// transaction that committed, and no id below it is given again: an id at
// or above it did not commit, and txid_status is right about one below.
// Once a later checkpoint has moved the next id on, nobody can tell.
func (s *Store) txStatus(t txn) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var (
		status   *string
		start    time.Time
		ckptOwn  bool // the latest checkpoint's redo point is itself
		ckptNext int64
	)
	err := s.pool.QueryRow(ctx, `SELECT CASE WHEN $1 < txid_snapshot_xmax(txid_current_snapshot()) THEN txid_status($1) ELSE 'future' END,
		pg_postmaster_start_time(), redo_lsn = checkpoint_lsn,
		(split_part(next_xid, ':', 1)::bigint << 32) + split_part(next_xid, ':', 2)::bigint
		FROM pg_control_checkpoint()`, t.xid).Scan(&status, &start, &ckptOwn, &ckptNext)
	switch {
	case err != nil || status == nil:
		return "", err
	case *status == "future":
		// Only a crash makes an id given out not yet given out.
		return "aborted", nil
	case *status == "aborted" || t.started.IsZero() || start.Equal(t.started):
	case !ckptOwn:
		return "reused", nil
	case t.xid >= ckptNext:
		return "aborted", nil
	}
	if *status != "in progress" {
		return *status, nil
	}
	// backend_xid is the 32-bit xid; txid_current adds the epoch above it.
	_, err = s.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE pid = $1 AND backend_xid::text::bigint = $2 % 4294967296`, int32(t.pid), t.xid)
	return *status, err
}

// lost reports whether err, met before COMMIT was sent, is a failure of
// the connection or the server rather than of the statements, so that the
// transaction may run again. The write timeout is neither: running again
// would likely wait as long.
func lost(conn *pgxpool.Conn, err error) bool {
	if retryableCode(pgCode(err)) {
		return true
	}
	return pgCode(err) == "" && conn.Conn().IsClosed() && !errors.Is(err, context.DeadlineExceeded)
}

// commitConn commits the transaction t open on conn, for interactive,
// whose statements have all been answered. retry reports that it certainly
// did not commit and may be run again; when the answer is lost, resolve
// asks.
func (s *Store) commitConn(ctx context.Context, conn *pgxpool.Conn, t txn) (err error, retry bool) {
	tag, err := conn.Exec(ctx, "COMMIT")
	switch {
	case err == nil && tag.String() == "COMMIT":
		return nil, false
	case err == nil:
		return fmt.Errorf("commit: the server rolled the transaction back (%s)", tag), true
	case pgconn.SafeToRetry(err):
		return fmt.Errorf("commit: %w", err), true
	case (pgCode(err) == "40001" || pgCode(err) == "40P01") && !conn.Conn().IsClosed():
		return fmt.Errorf("commit: %w", err), true
	}
	return s.resolve(t, err)
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
