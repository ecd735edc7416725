package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/client"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// runRemote is drover run in client mode: the job is submitted to the
// server; with --detach its id is printed at once, otherwise it is
// followed as a foreground run would show it, with the same exit codes.
func (a *app) runRemote(ctx context.Context, c *client.Client, ref string, f *runFlags) error {
	if a.acceptNewHostKeys {
		return usageErr("--accept-new-host-keys is the server's setting in client mode (drover server --accept-new-host-keys)")
	}
	req, err := a.request(ref, f, func(name string) (bool, error) {
		_, err := c.Workflow(ctx, name)
		if errors.Is(err, job.ErrNotFound) {
			return false, nil
		}
		return err == nil, refused(err)
	})
	if err != nil {
		return err
	}
	created, err := c.CreateJob(ctx, req)
	if err != nil {
		return refused(err)
	}
	id := created.Job.ID
	if f.detach {
		fmt.Fprintln(a.stdout, id)
		return nil
	}
	if a.isTerminal {
		if created.Children > 0 {
			fmt.Fprintf(a.stderr, "job %s started on %d hosts\n", id, created.Children)
		} else {
			fmt.Fprintf(a.stderr, "job %s started\n", id)
		}
	}
	final, err := a.followJobs(ctx, c, map[string]int64{id: 0}, f.verbose, created.Children > 0)
	if err != nil {
		return err
	}
	return exitCode(a.summarize(final), nil)
}

// followJobs follows jobs on the server, each after a record position,
// until each stops running there, showing them as the foreground
// commands of local mode do: Ctrl-C asks the server to suspend them at a
// safe point, a second Ctrl-C to interrupt their running steps as well.
func (a *app) followJobs(ctx context.Context, c *client.Client, after map[string]int64, verbose, quiet bool) ([]*job.Job, error) {
	ids := make([]string, 0, len(after))
	for id := range after {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	l := newLive(a.stdout, a.stderr, a.isTerminal, verbose)
	l.quietOutput = quiet || len(ids) > 1
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := a.onInterruptRemote(c, ids, cancel)
	defer stop()
	retry := a.reconnecting()
	var mu sync.Mutex
	var final []*job.Job
	var firstErr error
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			end, err := c.Follow(fctx, id, client.FollowOptions{
				Streams: []string{api.StreamOutput, api.StreamLog, api.StreamProgress, api.StreamStep},
				After:   after[id],
				Retry:   retry,
			}, func(ev client.Event) error {
				switch {
				case ev.Record != nil:
					l.Record(*ev.Record)
				case ev.Progress != nil:
					l.Progress(ev.Progress.JobID, ev.Progress.Progress)
				case ev.Step != nil:
					se := engine.StepEvent{JobID: ev.Step.JobID, Key: ev.Step.Key, Activity: ev.Step.Activity,
						Host: ev.Step.Host, Done: ev.Step.Done, Replayed: ev.Step.Replayed,
						Duration: time.Duration(ev.Step.DurationMS) * time.Millisecond}
					if ev.Step.Error != "" {
						se.Err = errors.New(ev.Step.Error)
					}
					l.Step(se)
				}
				return nil
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				if firstErr == nil {
					firstErr = fmt.Errorf("following job %s: %w", id, refused(err))
				}
			case end.Gone:
				final = append(final, &job.Job{ID: id, State: job.Stopped, Reason: "it was removed"})
			default:
				final = append(final, end.Job.Job)
			}
		}(id)
	}
	wg.Wait()
	l.Close()
	if firstErr != nil {
		if ctx.Err() == nil && fctx.Err() != nil {
			return nil, exitCode(ExitFailed, errors.New("stopped following; the jobs go on on the server (drover jobs)"))
		}
		return nil, firstErr
	}
	return final, nil
}

// onInterruptRemote makes the first Ctrl-C (or SIGTERM) ask the server
// to suspend the jobs at their next safe point and the second to
// interrupt their running steps. When the server cannot be reached,
// following ends (cancel) and the jobs go on there.
func (a *app) onInterruptRemote(c *client.Client, ids []string, cancel func()) func() {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		n := 0
		for {
			select {
			case <-done:
				return
			case <-ch:
			}
			n++
			body := api.Action{Reason: "suspended by Ctrl-C"}
			if n == 1 {
				fmt.Fprintln(a.stderr, "\nsuspending at the next safe point (Ctrl-C again to interrupt running steps)")
			} else {
				fmt.Fprintln(a.stderr, "\ninterrupting running steps; they run again on resume")
				body.Interrupt = true
			}
			for _, id := range ids {
				ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := c.Act(ctx, id, job.ActionSuspend, body)
				stop()
				if err != nil && !client.IsStatus(err, http.StatusConflict) {
					fmt.Fprintf(a.stderr, "drover: job %s: %v\n", id, err)
					cancel()
				}
			}
			if n > 2 {
				cancel()
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
