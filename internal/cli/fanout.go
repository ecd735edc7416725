package cli

import (
	"context"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

func (a *app) driveParent(ctx context.Context, eng *engine.Engine, parent *job.Job, hosts []string, verbose bool) error {
	l := newLive(a.stdout, a.stderr, a.isTerminal, verbose)
	l.quietOutput = true
	detach := make(chan struct{})
	stop := a.onInterrupt(eng, detach)
	defer stop()
	j, err := eng.DriveParent(ctx, parent, engine.ChildFilter{Hosts: hosts}, l, detach)
	l.Close()
	if err != nil {
		return err
	}
	return exitCode(a.summary(j, false), nil)
}
