package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// interactive runs fn in a transaction of its own on a pooled connection,
// for a write that must see what it reads before it decides (Request).
// Like the batched writes, it runs again with backoff while it certainly
// did not commit and the database is unreachable. Once begun it runs to
// its end whatever ctx does, bounded by WriteTimeout, so that the caller
// learns whether it was written.
func (s *Store) interactive(ctx context.Context, op string, fn func(ctx context.Context, tx *pgxpool.Conn) error) error {
	deadline := time.Now().Add(s.opt.RetryFor)
	for attempt := 1; ; attempt++ {
		if s.isClosed() {
			return fmt.Errorf("%s (store %s): %w", op, s.name, errClosed)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		err, retry := s.interactiveOnce(ctx, fn)
		if a, ok := answer(err); ok {
			s.reachable()
			return a
		}
		if err == nil {
			s.reachable()
			return nil
		}
		if retry {
			s.failed(op, attempt, err)
		}
		if !retry || s.opt.RetryFor < 0 || time.Now().After(deadline) {
			return s.dbErr(op, err)
		}
		if !backoff(ctx, attempt, nil) {
			return s.dbErr(op, err)
		}
	}
}

func (s *Store) interactiveOnce(ctx context.Context, fn func(ctx context.Context, tx *pgxpool.Conn) error) (err error, retry bool) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err), ctx.Err() == nil && connectRetryable(err)
	}
	defer conn.Release()
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opt.WriteTimeout)
	defer cancel()
	t := txn{pid: conn.Conn().PgConn().PID()}
	if _, err := conn.Exec(tctx, "BEGIN"); err != nil {
		return err, lost(conn, err)
	}
	if err := conn.QueryRow(tctx, txnSQL).Scan(&t.xid, &t.started); err != nil {
		rollback(conn)
		return err, lost(conn, err)
	}
	if err := fn(tctx, conn); err != nil {
		rollback(conn)
		if _, ok := answer(err); ok {
			return err, false
		}
		return err, lost(conn, err)
	}
	return s.commitConn(tctx, conn, t)
}

// Notify sends NOTIFY drover_due, as the writes that make a job due do,
// for a job made due some other way.
func (s *Store) Notify(ctx context.Context) error {
	return s.read(ctx, "notify "+notifyChannel, func(ctx context.Context, q querier) error {
		return q.QueryRow(ctx, "SELECT 1 FROM pg_notify($1, $2)", notifyChannel, s.schema).Scan(new(int))
	})
}

// Listen calls fn on each NOTIFY drover_due of this store's schema, until
// ctx ends or the store is closed. It listens on a connection of its own,
// outside the pool, which it establishes again with backoff when it fails;
// fn is also called each time listening starts, the first time and after
// every reconnection, since notifications sent meanwhile are lost and the
// caller should look for due jobs. fn runs on Listen's goroutine and should
// not block: notifications wait while it runs.
func (s *Store) Listen(ctx context.Context, fn func()) {
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := s.listenOnce(ctx, fn)
		if ctx.Err() != nil || s.isClosed() {
			return
		}
		if time.Since(start) > time.Minute {
			attempt = 1 // it worked for a while: this is a new failure
		}
		s.failed("listen for due jobs", attempt, err)
		if !backoff(ctx, attempt, s.stop) {
			return
		}
	}
}

func (s *Store) listenOnce(ctx context.Context, fn func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	conn, err := pgx.ConnectConfig(ctx, s.cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	s.reachable()
	fn()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if n.Payload == s.schema {
			fn()
		}
	}
}
