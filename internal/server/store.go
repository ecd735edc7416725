package server

import (
	"context"
	"strings"
	"time"

	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// AuthStore is what the server needs to check API tokens. The SQLite
// store implements it.
type AuthStore interface {
	// TokenByHash returns the token whose secret hashes to hash
	// (auth.Hash), or an error wrapping job.ErrNotFound.
	TokenByHash(ctx context.Context, hash string) (*auth.Token, error)
	// TouchToken records when a token was last used.
	TouchToken(ctx context.Context, name string, at time.Time) error
}

// TokenStore manages API tokens, for drover token.
type TokenStore interface {
	AuthStore
	// CreateToken stores a new token; one of the same name fails with
	// auth.ErrExists.
	CreateToken(ctx context.Context, t *auth.Token) error
	Tokens(ctx context.Context) ([]*auth.Token, error)
	// DeleteToken removes a token, or fails with job.ErrNotFound.
	DeleteToken(ctx context.Context, name string) error
}

// Optional store capabilities the server uses when its store has them,
// with a slower way around when it has not.
type (
	// topLevelDue is Due restricted to jobs without a parent.
	topLevelDue interface {
		DueTopLevel(ctx context.Context, now time.Time, limit int) ([]string, error)
	}
	// jobCounter counts jobs by effective state, for the metrics.
	jobCounter interface {
		CountJobs(ctx context.Context, now time.Time, topLevel bool) (map[job.State]int, error)
	}
	// recordFollower reads both streams of a job, and of its children, in
	// Seq order, for followers.
	recordFollower interface {
		RecordsSince(ctx context.Context, jobID string, family bool, after int64, limit int) ([]job.Record, error)
	}
	// lastSeq is the Seq of a job's last record.
	lastSeq interface {
		LastSeq(ctx context.Context, jobID string, family bool) (int64, error)
	}
)

// serveStore is the store as the server's engine sees it, when the store
// cannot claim due jobs itself (engine.Serve then lists them with Due):
// its due list holds top-level jobs only. A child job must be taken up
// only by its parent's drive, which applies the parent's throttle,
// batches and failure limit and settles the parent's state afterwards.
// (ServeOptions.TopLevel does the same for orphans and for stores that
// claim due jobs themselves.)
type serveStore struct{ engine.Store }

// dueClaimer is a store that claims due jobs itself; the engine finds it
// by this method, which a wrapper would hide.
type dueClaimer interface {
	ClaimDue(ctx context.Context, owner string, until, now time.Time, limit int, topLevel bool) ([]*job.Job, error)
}

// engineStore is the store to give the server's engine.
func engineStore(st engine.Store) engine.Store {
	if _, ok := st.(dueClaimer); ok {
		return st
	}
	return serveStore{st}
}

func (s serveStore) Due(ctx context.Context, now time.Time, limit int) ([]string, error) {
	if d, ok := s.Store.(topLevelDue); ok {
		return d.DueTopLevel(ctx, now, limit)
	}
	// Without the store's help: child ids are PARENT.N (see
	// engine.PrepareFanout), top-level ids have no dot.
	ids, err := s.Store.Due(ctx, now, 0)
	if err != nil {
		return nil, err
	}
	out := ids[:0]
	for _, id := range ids {
		if !strings.Contains(id, ".") {
			out = append(out, id)
			if limit > 0 && len(out) == limit {
				break
			}
		}
	}
	return out, nil
}
