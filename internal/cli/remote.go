package cli

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/remote"
)

// lazyRemote builds the SSH connection manager on first use, so that
// commands that run nothing remote never read SSH configuration.
type lazyRemote struct {
	opts remote.Options
	once sync.Once
	m    *remote.Manager
	err  error
	made atomic.Pointer[remote.Manager] // m, once made, for metrics readers
}

var (
	_ engine.Executor  = (*lazyRemote)(nil)
	_ engine.Copier    = (*lazyRemote)(nil)
	_ engine.Forgetter = (*lazyRemote)(nil)
)

func (l *lazyRemote) get() (*remote.Manager, error) {
	l.once.Do(func() {
		l.m, l.err = remote.New(l.opts)
		if l.m != nil {
			l.made.Store(l.m)
		}
	})
	return l.m, l.err
}

// metrics are the connection manager's counters, once it exists.
func (l *lazyRemote) metrics() (remote.Metrics, bool) {
	m := l.made.Load()
	if m == nil {
		return remote.Metrics{}, false
	}
	return m.Metrics(), true
}

func (l *lazyRemote) Exec(ctx context.Context, c *engine.Command) (*engine.CommandResult, error) {
	m, err := l.get()
	if err != nil {
		return nil, err
	}
	return m.Exec(ctx, c)
}

func (l *lazyRemote) Copy(ctx context.Context, t *engine.Transfer) (*engine.TransferResult, error) {
	m, err := l.get()
	if err != nil {
		return nil, err
	}
	return m.Copy(ctx, t)
}

func (l *lazyRemote) Forget(ctx context.Context, h engine.Host, jobID string) error {
	m, err := l.get()
	if err != nil {
		return err
	}
	return m.Forget(ctx, h, jobID)
}

// close releases connections, if any were made.
func (l *lazyRemote) close() {
	if l.m != nil {
		_ = l.m.Close()
	}
}
