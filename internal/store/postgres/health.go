package postgres

import (
	"sync/atomic"
	"time"
)

// stillDownEvery is how often a database that stays unreachable is
// reported again, so that an operator reading the log sees that drover is
// still waiting rather than stuck.
const stillDownEvery = 30 * time.Second

// health follows whether the database is reachable, so that an outage is
// logged once when it starts and once when it ends instead of once per
// retry of every call, and so that the engine can tell leases that lapsed
// during an outage (see ReachableSince).
type health struct {
	// down is the time (unix nanoseconds) the current outage was first
	// seen, 0 while the database is reachable: successful calls check it
	// with one atomic load.
	down     atomicTime
	upSince  atomicTime // when the last outage ended; 0 if none was seen
	reported atomicTime // when the current outage was last logged
}

// unreachable records a failure to reach the database (a connection that
// could not be made or was lost) met while doing op. The first of an
// outage is logged as a warning; the retries that follow are logged at
// debug level, with a reminder every stillDownEvery.
func (s *Store) unreachable(op string, attempt int, err error) {
	now := time.Now()
	if s.health.down.casZero(now) {
		s.health.reported.store(now)
		s.log.Warn("database unavailable; calls wait for it and retry with backoff", "op", op, "err", s.redact(err))
		return
	}
	if last := s.health.reported.load(); now.Sub(last) >= stillDownEvery && s.health.reported.cas(last, now) {
		s.log.Warn("database still unavailable; retrying with backoff", "for", now.Sub(s.health.down.load()).Round(time.Second), "op", op, "err", s.redact(err))
		return
	}
	s.log.Debug("database call failed; retrying", "op", op, "attempt", attempt, "err", s.redact(err))
}

// reachable records that a call reached the database, ending an outage
// if one was under way.
func (s *Store) reachable() {
	since := s.health.down.load()
	if since.IsZero() {
		return
	}
	now := time.Now()
	if s.health.down.cas(since, time.Time{}) {
		s.health.upSince.store(now)
		s.log.Warn("database available again", "after", now.Sub(since).Round(time.Millisecond))
	}
}

// ReachableSince is when the database last became reachable after an
// outage this store saw: zero if it saw none, and now (or later) while one
// lasts. The engine takes over another's lapsed leases only once the
// database has been reachable for a while: a lease that lapsed because
// nobody could reach the database is its holder's to renew.
func (s *Store) ReachableSince() time.Time {
	if !s.health.down.load().IsZero() {
		return time.Now()
	}
	return s.health.upSince.load()
}

// atomicTime is a time.Time read and written atomically, as unix
// nanoseconds; the zero Time is 0.
type atomicTime struct{ v atomic.Int64 }

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func (a *atomicTime) load() time.Time {
	n := a.v.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func (a *atomicTime) store(t time.Time) { a.v.Store(nanos(t)) }

func (a *atomicTime) cas(old, new time.Time) bool {
	return a.v.CompareAndSwap(nanos(old), nanos(new))
}

// casZero sets t if no time is set.
func (a *atomicTime) casZero(t time.Time) bool { return a.v.CompareAndSwap(0, nanos(t)) }

// failed records a call's failure that it retries: an outage, unless the
// server is up and the transaction lost a conflict with another
// (serialization failure, deadlock), which is logged as it is.
func (s *Store) failed(op string, attempt int, err error) {
	if c := pgCode(err); c == "40001" || c == "40P01" {
		s.log.Warn("a write conflicted with another transaction; retrying", "op", op, "attempt", attempt, "err", s.redact(err))
		return
	}
	s.unreachable(op, attempt, err)
}
