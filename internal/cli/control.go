package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/client"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/script"
)

// defaultResumeStates is what resume --all takes without --state: every
// job that stopped short of its end by no decision of its own. Failed and
// stopped jobs are resumed only when named or asked for with --state.
var defaultResumeStates = []job.State{job.Queued, job.Interrupted, job.Suspended, job.Waiting}

func (a *app) resumeCmd() *cobra.Command {
	var all, upgrade, verbose bool
	var state, hosts string
	var concurrency int
	c := &cobra.Command{
		Use:   "resume JOB... | --all [--state S,...]",
		Short: "Continue suspended, waiting, interrupted or failed jobs in the foreground",
		Long: `Continue jobs from their last persisted point: committed steps are replayed
from the journal, the first step without a result runs for real.

A job waiting for a signal that has not arrived stays waiting. With
--upgrade the job replays the current version of its workflow (the
registered one, or its file) instead of the source stored with it, if its
journal fits the new source.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if all == (len(args) > 0) {
				return usageErr("give job ids or --all")
			}
			states := defaultResumeStates
			if state != "" {
				var err error
				if states, err = parseStates(state); err != nil {
					return err
				}
			}
			hostList := splitList(hosts)
			if c, err := a.client(); c != nil || err != nil {
				if err != nil {
					return err
				}
				return a.resumeRemote(ctx, c, args, all, states, hostList, upgrade, verbose)
			}
			eng, err := a.open(ctx)
			if err != nil {
				return err
			}
			var jobs []*job.Job
			if all {
				// Parents resume their own children.
				list, err := eng.Store().Jobs(ctx, job.Filter{TopLevel: true}, time.Now())
				if err != nil {
					return err
				}
				for _, j := range list {
					if containsState(states, eng.EffectiveState(j)) {
						jobs = append(jobs, j)
					}
				}
				if len(jobs) == 0 {
					fmt.Fprintln(a.stderr, "no jobs to resume")
					return nil
				}
			} else {
				for _, id := range args {
					j, err := a.getJob(ctx, id)
					if err != nil {
						return err
					}
					jobs = append(jobs, j)
				}
			}
			if len(hostList) > 0 {
				for _, j := range jobs {
					if len(j.Spec) == 0 {
						return usageErr("--hosts applies to parent jobs (run with --targets or --inventory); %s is not one", j.ID)
					}
				}
			}
			return a.resume(ctx, eng, jobs, hostList, upgrade, verbose, concurrency)
		},
	}
	c.Flags().BoolVar(&all, "all", false, "resume every job in the --state states (default: queued, interrupted, suspended, waiting)")
	c.Flags().StringVar(&state, "state", "", "with --all: the states to resume (comma-separated)")
	c.Flags().StringVar(&hosts, "hosts", "", "for a parent job: only these hosts' children")
	c.Flags().BoolVar(&upgrade, "upgrade", false, "replay the current version of the workflow instead of the stored one")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "also show the output of commands as they run")
	c.Flags().BoolVar(&a.acceptNewHostKeys, "accept-new-host-keys", false, "record the keys of hosts known_hosts does not know yet (a changed key still fails)")
	c.Flags().IntVar(&concurrency, "concurrency", 64, "at most N jobs running at once")
	_ = c.Flags().MarkHidden("concurrency")
	return c
}

func (a *app) resume(ctx context.Context, eng *engine.Engine, jobs []*job.Job, hosts []string, upgrade, verbose bool, concurrency int) error {
	var run, parents []*job.Job
	code := ExitOK
	worse := func(c int) { code = worst(code, c) }
	var scripts []scriptToRun
	for _, j := range jobs {
		if c := a.resumeCheck(j, eng.EffectiveState(j)); c != ExitOK {
			worse(c)
			continue
		}
		sc, err := eng.ScriptOf(ctx, j)
		if err != nil {
			fmt.Fprintf(a.stderr, "drover: %v\n", err)
			worse(ExitFailed)
			continue
		}
		if sc != nil {
			if upgrade {
				fmt.Fprintf(a.stderr, "drover: job %s is a script's job: it has no workflow to upgrade; drover resume runs its script as it is now\n", j.ID)
				worse(ExitUsage)
				continue
			}
			scripts = append(scripts, scriptToRun{j, sc})
			continue
		}
		if upgrade {
			if err := a.upgrade(ctx, eng, j); err != nil {
				fmt.Fprintf(a.stderr, "drover: %v\n", err)
				worse(ExitFailed)
				continue
			}
		}
		if len(j.Spec) > 0 {
			parents = append(parents, j)
			continue
		}
		run = append(run, j)
	}
	for _, p := range parents {
		pj, err := eng.Claim(ctx, p.ID, engine.Resumable)
		if err != nil {
			fmt.Fprintf(a.stderr, "drover: job %s: %v\n", p.ID, err)
			worse(ExitFailed)
			continue
		}
		err = a.driveParent(ctx, eng, pj, hosts, verbose)
		var ee *exitError
		if errors.As(err, &ee) {
			worse(ee.code)
		} else if err != nil {
			return err
		}
	}
	if len(scripts) > 0 {
		worse(a.resumeScripts(ctx, eng, scripts))
	}
	if len(run) == 0 {
		return exitCode(code, nil)
	}
	l := newLive(a.stdout, a.stderr, a.isTerminal, verbose)
	if len(run) > 1 {
		l.quietOutput = true
	}
	detach := make(chan struct{})
	stop := a.onInterrupt(eng, detach)
	defer stop()
	ids := make([]string, len(run))
	for i, j := range run {
		ids[i] = j.ID
	}
	var final []*job.Job
	eng.DriveAll(ctx, ids, engine.Resumable, concurrency, l, detach, func(r engine.Result) {
		if r.Err != nil {
			l.mu.Lock()
			l.clearLocked()
			msg := r.Err.Error()
			if errors.Is(r.Err, job.ErrHeld) {
				msg = "it is running in another drover process"
			}
			fmt.Fprintf(a.stderr, "drover: job %s: %s\n", r.ID, msg)
			l.mu.Unlock()
			worse(ExitFailed)
			return
		}
		final = append(final, r.Job)
	})
	l.Close()
	worse(a.summarize(final))
	return exitCode(code, nil)
}

// resumeCheck prints why a job in state is not resumed, and returns the
// exit code that says so; ExitOK when it is to be resumed.
func (a *app) resumeCheck(j *job.Job, state job.State) int {
	switch {
	case state == job.Completed:
		fmt.Fprintf(a.stderr, "drover: job %s already completed; there is nothing to resume\n", j.ID)
		return ExitFailed
	case state == job.Running:
		fmt.Fprintf(a.stderr, "drover: job %s is running in another drover process (%s); it is not resumed twice\n", j.ID, j.Owner)
		return ExitFailed
	case state == job.Waiting && len(j.WaitFor) > 0 && (j.WakeAt.IsZero() || time.Now().Before(j.WakeAt)):
		fmt.Fprintf(a.stderr, "job %s is waiting for signal %s; send it with: drover signal %s %s '{...}'\n",
			j.ID, strings.Join(j.WaitFor, ", "), j.ID, j.WaitFor[0])
		return ExitPending
	}
	return ExitOK
}

func splitList(s string) []string {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if h = strings.TrimSpace(h); h != "" {
			out = append(out, h)
		}
	}
	return out
}

// resumeRemote is drover resume in client mode: the server queues the
// jobs and continues them; this follows them as a local resume shows
// them.
func (a *app) resumeRemote(ctx context.Context, c *client.Client, ids []string, all bool, states []job.State, hosts []string, upgrade, verbose bool) error {
	b := &remoteBackend{a: a, c: c}
	var jobs []*api.Job
	if all {
		list, err := b.listJobs(ctx, jobsQuery{states: states})
		if err != nil {
			return err
		}
		for i := range list {
			jobs = append(jobs, &list[i])
		}
		if len(jobs) == 0 {
			fmt.Fprintln(a.stderr, "no jobs to resume")
			return nil
		}
	} else {
		for _, id := range ids {
			j, err := b.getJob(ctx, id)
			if err != nil {
				return err
			}
			jobs = append(jobs, j)
		}
	}
	if len(hosts) > 0 {
		for _, j := range jobs {
			if len(j.Spec) == 0 {
				return usageErr("--hosts applies to parent jobs (run with --targets or --inventory); %s is not one", j.ID)
			}
		}
	}
	code := ExitOK
	follow := map[string]int64{}
	parents := false
	for _, j := range jobs {
		if c := a.resumeCheck(j.Job, j.State); c != ExitOK {
			code = worst(code, c)
			continue
		}
		body := api.Resume{Upgrade: upgrade, Hosts: hosts}
		if upgrade && j.Workflow == "" {
			if j.Path == "" {
				fmt.Fprintf(a.stderr, "drover: job %s has no registered workflow or file to upgrade from\n", j.ID)
				code = worst(code, ExitFailed)
				continue
			}
			src, err := script.ReadSource(j.Path)
			if err != nil {
				fmt.Fprintf(a.stderr, "drover: job %s: reading its workflow again: %v\n", j.ID, err)
				code = worst(code, ExitFailed)
				continue
			}
			body.Source = src
		}
		r, err := c.Resume(ctx, j.ID, body)
		if err != nil {
			fmt.Fprintf(a.stderr, "drover: %v\n", refusedNoPrefix(err))
			code = worst(code, ExitFailed)
			continue
		}
		if r.Note != "" {
			fmt.Fprintln(a.stderr, r.Note)
		}
		parents = parents || len(j.Spec) > 0
		follow[j.ID] = r.Position
	}
	if len(follow) == 0 {
		return exitCode(code, nil)
	}
	final, err := a.followJobs(ctx, c, follow, verbose, parents)
	if err != nil {
		return err
	}
	return exitCode(worst(code, a.summarize(final)), nil)
}

// upgrade points a job at the current version of its workflow, after
// checking that its journal replays on it.
func (a *app) upgrade(ctx context.Context, eng *engine.Engine, j *job.Job) error {
	var src *job.Source
	switch {
	case j.Workflow != "":
		wf, err := eng.Store().Workflow(ctx, j.Workflow)
		if err != nil {
			return fmt.Errorf("job %s: workflow %s: %w", j.ID, j.Workflow, err)
		}
		if src, err = eng.Store().Source(ctx, wf.Digest); err != nil {
			return err
		}
	case j.Path != "":
		var err error
		if src, err = script.ReadSource(j.Path); err != nil {
			return fmt.Errorf("job %s: reading its workflow again: %w", j.ID, err)
		}
	default:
		return fmt.Errorf("job %s has no registered workflow or file to upgrade from", j.ID)
	}
	if src.Digest == j.Digest {
		fmt.Fprintf(a.stderr, "job %s already runs the current version\n", j.ID)
		return nil
	}
	prev := eng.EffectiveState(j)
	cj, err := eng.Claim(ctx, j.ID, engine.Resumable)
	if err != nil {
		return fmt.Errorf("job %s: %w", j.ID, err)
	}
	if err := eng.Upgrade(ctx, cj, src); err != nil {
		if prev == job.Interrupted {
			prev = job.Suspended
		}
		_ = eng.Store().Apply(context.WithoutCancel(ctx), &job.Update{JobID: cj.ID, Owner: cj.Owner, State: &prev, Release: true})
		return err
	}
	empty := ""
	st := job.Queued
	if err := eng.Store().Apply(ctx, &job.Update{JobID: cj.ID, Owner: cj.Owner, State: &st, Release: true, Error: &empty}); err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "job %s upgraded to source %s\n", j.ID, src.Digest[:12])
	return nil
}

func (a *app) suspendCmd() *cobra.Command {
	return a.actionCmd("suspend", job.ActionSuspend, "Suspend jobs at their next safe point", job.Suspended)
}

func (a *app) stopCmd() *cobra.Command {
	return a.actionCmd("stop", job.ActionStop, "Stop jobs: running steps are cancelled, remote processes killed", job.Stopped)
}

func (a *app) actionCmd(name string, act job.Action, short string, want job.State) *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   name + " JOB...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			code := ExitOK
			for _, id := range args {
				if _, err := b.getJob(ctx, id); err != nil {
					fmt.Fprintf(a.stderr, "drover: %v\n", err)
					code = ExitFailed
					continue
				}
				j, err := b.act(ctx, id, act, fmt.Sprintf("%s requested by %s", name, senderName(a)))
				if err != nil {
					fmt.Fprintf(a.stderr, "drover: job %s: %v\n", id, explainState(err))
					code = ExitFailed
					continue
				}
				// A job held by another process acts at its next safe point;
				// wait for it to get there.
				deadline := time.Now().Add(timeout)
				for j.State == job.Running && time.Now().Before(deadline) {
					time.Sleep(100 * time.Millisecond)
					if j, err = b.getJob(ctx, id); err != nil {
						return err
					}
				}
				if j.State == job.Running {
					fmt.Fprintf(a.stdout, "job %s: %s requested; it takes effect at its next safe point\n", id, name)
				} else {
					fmt.Fprintf(a.stdout, "job %s %s\n", id, j.State)
				}
			}
			return exitCode(code, nil)
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for a running job to get there")
	return c
}

func explainState(err error) error {
	if errors.Is(err, job.ErrWrongState) {
		return fmt.Errorf("%w", err)
	}
	return err
}

func senderName(a *app) string {
	if u := a.getenv("USER"); u != "" {
		return u
	}
	return "an operator"
}

func (a *app) rmCmd() *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "rm JOB...",
		Short: "Remove jobs with their journal, output, logs and children",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			code := ExitOK
			for _, id := range args {
				j, err := b.getJob(ctx, id)
				if err != nil {
					fmt.Fprintf(a.stderr, "drover: %v\n", err)
					code = ExitFailed
					continue
				}
				if err := b.remove(ctx, j, force); err != nil {
					fmt.Fprintf(a.stderr, "drover: %v\n", err)
					code = ExitFailed
					continue
				}
				fmt.Fprintf(a.stdout, "removed job %s\n", id)
			}
			return exitCode(code, nil)
		},
	}
	c.Flags().BoolVar(&force, "force", false, "stop running jobs first")
	return c
}

func (a *app) waitCmd() *cobra.Command {
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "wait JOB...",
		Short: "Block until the jobs end (completed, failed, stopped or skipped)",
		Long:  "Block until the jobs end. Exit status 0 when all completed, 1 otherwise.",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			for _, id := range args {
				if _, err := b.getJob(ctx, id); err != nil {
					return err
				}
			}
			var deadline <-chan time.Time
			if timeout > 0 {
				deadline = time.After(timeout)
			}
			code := ExitOK
			for _, id := range args {
				for {
					j, err := b.getJob(ctx, id)
					if err != nil {
						return err
					}
					if j.Job.State.Ended() {
						fmt.Fprintf(a.stdout, "job %s %s\n", id, j.Job.State)
						if j.Job.State != job.Completed {
							code = ExitFailed
						}
						break
					}
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-deadline:
						return exitCode(ExitFailed, fmt.Errorf("job %s has not ended within %s; it is %s", id, timeout, j.State))
					case <-time.After(200 * time.Millisecond):
					}
				}
			}
			return exitCode(code, nil)
		},
	}
	c.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (exit 1)")
	return c
}

func (a *app) signalCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "signal JOB NAME [JSON]",
		Short: "Deliver a signal to a job waiting for it",
		Args:  cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			if _, err := b.getJob(ctx, args[0]); err != nil {
				return err
			}
			var payload json.RawMessage
			if len(args) == 3 {
				payload = json.RawMessage(args[2])
				if !json.Valid(payload) {
					return usageErr("the signal's payload is not valid JSON: %s (quote strings: '\"yes\"')", args[2])
				}
			}
			j, err := b.signal(ctx, args[0], args[1], payload)
			if err != nil {
				if errors.Is(err, job.ErrNotWaiting) {
					return exitCode(ExitFailed, fmt.Errorf("cannot signal job %s: %w", args[0], err))
				}
				return err
			}
			fmt.Fprintf(a.stdout, "delivered signal %s to job %s; it is %s\n", args[1], j.ID, j.State)
			fmt.Fprintf(a.stderr, "continue it with: drover resume %s (a drover server picks it up by itself)\n", j.ID)
			return nil
		},
	}
	return c
}

// scriptToRun is a script job drover resume runs again.
type scriptToRun struct {
	job    *job.Job
	script *engine.Script
}

// resumeScripts runs the scripts of script jobs again from the top, one
// after the other, their output on this command's: their blocks that
// ended replay, the rest run (SPEC 6). Each script gets this command's
// environment with DROVER_JOB naming its job and DROVER_DB this store.
func (a *app) resumeScripts(ctx context.Context, eng *engine.Engine, scripts []scriptToRun) int {
	db, err := a.dbPath()
	if err != nil {
		fmt.Fprintf(a.stderr, "drover: %v\n", err)
		return ExitFailed
	}
	if !isPostgres(db) {
		// The script runs in its own directory.
		if db, err = filepath.Abs(db); err != nil {
			fmt.Fprintf(a.stderr, "drover: %v\n", err)
			return ExitFailed
		}
	}
	env := scriptEnv(os.Environ(), db)
	detach := make(chan struct{})
	stop := a.onInterrupt(eng, detach)
	defer stop()
	code := ExitOK
	var final []*job.Job
	for _, s := range scripts {
		select {
		case <-detach:
			// Ctrl-C: the rest are not started.
			return worst(code, a.summarize(final))
		default:
		}
		cj, err := eng.ClaimScript(ctx, s.job.ID)
		if err != nil {
			msg := err.Error()
			if errors.Is(err, job.ErrHeld) {
				msg = "its script is still running"
			}
			fmt.Fprintf(a.stderr, "drover: job %s: %s\n", s.job.ID, msg)
			code = worst(code, ExitFailed)
			continue
		}
		fmt.Fprintf(a.stderr, "drover: job %s: running %s again (in %s)\n", cj.ID, strings.Join(s.script.Argv, " "), s.script.Cwd)
		j, _, err := eng.RunScript(ctx, cj, s.script, engine.ScriptRun{Env: env, Stdout: a.stdout, Stderr: a.stderr})
		if err != nil {
			fmt.Fprintf(a.stderr, "drover: job %s: %v\n", cj.ID, err)
			code = worst(code, ExitFailed)
			continue
		}
		final = append(final, j)
	}
	return worst(code, a.summarize(final))
}

// scriptEnv is a resumed script's environment: this command's, with the
// store named so that its blocks find the job (whatever --db said) and no
// server, since drover step works on the store.
func scriptEnv(environ []string, db string) []string {
	env := make([]string, 0, len(environ)+1)
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "DROVER_DB", "DROVER_SERVER", "DROVER_JOB":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "DROVER_DB="+db)
}
