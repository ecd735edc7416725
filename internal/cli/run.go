package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/script"
)

type runFlags struct {
	params    []string
	input     string
	targets   string
	inventory string
	limit     string
	throttle  int
	batch     string
	maxFail   string
	onError   string
	persist   string
	timeout   time.Duration
	name      string
	detach    bool
	verbose   bool
}

func (a *app) runCmd() *cobra.Command {
	var f runFlags
	c := &cobra.Command{
		Use:   "run FILE|NAME [-p key=value]...",
		Short: "Run a workflow as a new job, in the foreground",
		Long: `Run a workflow file or a registered workflow as a new job and follow it.

Output goes to stdout, logs and progress to stderr. Exit status: 0 when the
job completed, 1 when it failed, 2 on a usage error, 3 when it is suspended
or waiting (the command that continues it is printed). Ctrl-C suspends the
job at its next safe point; a second Ctrl-C interrupts the running steps,
which run again on resume.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.run(cmd.Context(), args[0], &f)
		},
	}
	fl := c.Flags()
	fl.StringArrayVarP(&f.params, "param", "p", nil, "a parameter of main, as key=value (repeatable)")
	fl.StringVar(&f.input, "input", "", "all parameters as one JSON object, or @file")
	fl.StringVar(&f.targets, "targets", "", "comma-separated hosts: one child job per host")
	fl.StringVar(&f.inventory, "inventory", "", "an Ansible inventory file (INI or YAML): one child job per host")
	fl.StringVar(&f.limit, "limit", "", "with --inventory: only these groups or hosts (Ansible pattern)")
	fl.IntVar(&f.throttle, "throttle", 0, "at most N child jobs running at once (0: no limit)")
	fl.StringVar(&f.batch, "batch", "", "run child jobs in fixed batches of N or N%")
	fl.StringVar(&f.maxFail, "max-fail", "", "start no new host once N or N% have failed")
	fl.StringVar(&f.onError, "on-error", "fail", "what a failed step does to the job: fail or suspend")
	fl.StringVar(&f.persist, "persist", "checkpoints", "when the journal is written: checkpoints, always or never")
	fl.DurationVar(&f.timeout, "timeout", 0, "fail the job when it has not ended this long after it was created")
	fl.StringVar(&f.name, "name", "", "a name for the job")
	fl.BoolVar(&f.detach, "detach", false, "hand the job to a drover server (--server) and print its id at once")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "also show the output of commands as they run")
	fl.BoolVar(&a.acceptNewHostKeys, "accept-new-host-keys", false, "record the keys of hosts known_hosts does not know yet (a changed key still fails)")
	return c
}

// readInput reads --input: inline JSON or @file.
func readInput(v string) (json.RawMessage, error) {
	if v == "" {
		return nil, nil
	}
	data := []byte(v)
	if strings.HasPrefix(v, "@") {
		var err error
		data, err = os.ReadFile(v[1:])
		if err != nil {
			return nil, usageErr("--input: %v", err)
		}
	}
	if !json.Valid(data) {
		return nil, usageErr("--input is not valid JSON")
	}
	return data, nil
}

// request turns drover run's flags into a job request: the workflow's
// source (read here, with the files it loads) or a registered workflow's
// name, and an inventory's content. registered says whether a name is a
// registered workflow.
func (a *app) request(ref string, f *runFlags, registered func(string) (bool, error)) (*api.CreateJob, error) {
	if f.targets != "" && f.inventory != "" {
		return nil, usageErr("give --targets or --inventory, not both")
	}
	if f.limit != "" && f.inventory == "" {
		return nil, usageErr("--limit selects hosts of an --inventory")
	}
	req := &api.CreateJob{Params: f.params, Name: f.name, Persist: f.persist, OnError: f.onError,
		Throttle: f.throttle, Batch: f.batch, MaxFail: f.maxFail, Limit: f.limit}
	if f.timeout != 0 {
		req.Timeout = f.timeout.String()
	}
	// An existing file wins over a registered workflow of the same name.
	if fi, err := os.Stat(ref); err == nil && !fi.IsDir() {
		src, err := script.ReadSource(ref)
		if err != nil {
			return nil, exitCode(ExitUsage, err)
		}
		req.Source, req.Path = src, ref
		if p, err := absPath(ref); err == nil {
			req.Path = p
		}
	} else {
		ok, err := registered(ref)
		if err != nil {
			return nil, err
		}
		if !ok {
			if strings.ContainsAny(ref, "/.") {
				return nil, usageErr("%s: no such file, and no registered workflow of that name", ref)
			}
			return nil, usageErr("no workflow named %q and no such file (see drover workflow list)", ref)
		}
		req.Workflow = ref
	}
	input, err := readInput(f.input)
	if err != nil {
		return nil, err
	}
	req.Input = input
	for _, t := range strings.Split(f.targets, ",") {
		if t = strings.TrimSpace(t); t != "" {
			req.Targets = append(req.Targets, t)
		}
	}
	if f.inventory != "" {
		data, err := os.ReadFile(f.inventory)
		if err != nil {
			return nil, usageErr("--inventory: read inventory: %v", err)
		}
		req.Inventory, req.InventoryName = string(data), f.inventory
	}
	return req, nil
}

func (a *app) run(ctx context.Context, ref string, f *runFlags) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	if c != nil {
		return a.runRemote(ctx, c, ref, f)
	}
	if f.detach {
		return usageErr("--detach hands the job to a drover server: give --server URL (or set DROVER_SERVER) with DROVER_TOKEN; without a server drover run runs the job in the foreground")
	}
	eng, err := a.open(ctx)
	if err != nil {
		return err
	}
	req, err := a.request(ref, f, func(name string) (bool, error) {
		_, err := eng.Store().Workflow(ctx, name)
		if errors.Is(err, job.ErrNotFound) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return err
	}
	prep, children, err := api.Prepare(ctx, eng, req)
	if err != nil {
		return exitCode(ExitUsage, err)
	}
	if children != nil {
		if err := eng.CreateFanout(ctx, prep, children); err != nil {
			return fmt.Errorf("creating the jobs: %w", storeError(err))
		}
		if a.isTerminal {
			fmt.Fprintf(a.stderr, "job %s started on %d hosts\n", prep.Job.ID, len(children))
		}
		return a.driveParent(ctx, eng, prep.Job, nil, f.verbose)
	}
	if err := eng.Create(ctx, prep.Source, true, prep.Job); err != nil {
		return fmt.Errorf("creating the job: %w", storeError(err))
	}
	if a.isTerminal {
		fmt.Fprintf(a.stderr, "job %s started\n", prep.Job.ID)
	}
	return a.foreground(ctx, eng, []*job.Job{prep.Job}, f.verbose)
}

// foreground drives claimed jobs in this process until they stop needing
// it, with Ctrl-C suspending them at a safe point.
func (a *app) foreground(ctx context.Context, eng *engine.Engine, jobs []*job.Job, verbose bool) error {
	l := newLive(a.stdout, a.stderr, a.isTerminal, verbose)
	detach := make(chan struct{})
	stopSignals := a.onInterrupt(eng, detach)
	defer stopSignals()
	var final []*job.Job
	if len(jobs) == 1 {
		j, err := eng.Drive(ctx, jobs[0], l, detach)
		l.Close()
		if err != nil {
			return err
		}
		final = append(final, j)
	} else {
		l.quietOutput = true
		ids := make([]string, len(jobs))
		for i, j := range jobs {
			ids[i] = j.ID
		}
		final = a.driveMany(ctx, eng, ids, l, detach)
	}
	return exitCode(a.summarize(final), nil)
}

func (a *app) driveMany(ctx context.Context, eng *engine.Engine, ids []string, l *live, detach chan struct{}) []*job.Job {
	var final []*job.Job
	eng.DriveAll(ctx, ids, engine.Resumable, 64, l, detach, func(r engine.Result) {
		if r.Err != nil {
			l.mu.Lock()
			l.clearLocked()
			fmt.Fprintf(a.stderr, "job %s: %v\n", r.ID, r.Err)
			l.mu.Unlock()
			final = append(final, &job.Job{ID: r.ID, State: job.Failed, Error: r.Err.Error()})
			return
		}
		final = append(final, r.Job)
	})
	l.Close()
	return final
}

// summarize prints how each job ended and returns the exit code: 1 if any
// failed, else 3 if any is suspended or waiting, else 0.
func (a *app) summarize(jobs []*job.Job) int {
	code := ExitOK
	multi := len(jobs) > 1
	counts := map[job.State]int{}
	for _, j := range jobs {
		counts[j.State]++
		if !multi || j.State != job.Completed {
			code = worst(code, a.summary(j, multi))
		}
	}
	if multi {
		var parts []string
		for _, s := range job.AllStates {
			if n := counts[s]; n > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", n, s))
			}
		}
		fmt.Fprintf(a.stderr, "%d jobs: %s\n", len(jobs), strings.Join(parts, ", "))
	}
	return code
}

// onInterrupt makes the first Ctrl-C (or SIGTERM) suspend the jobs held
// at their next safe point and the second interrupt their running steps.
func (a *app) onInterrupt(eng *engine.Engine, detach chan struct{}) func() {
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
			held := eng.Held()
			switch n {
			case 1:
				close(detach)
				fmt.Fprintln(a.stderr, "\nsuspending at the next safe point (Ctrl-C again to interrupt running steps)")
				for _, id := range held {
					_, _ = eng.Request(context.Background(), id, job.ActionSuspend, "suspended by Ctrl-C")
				}
			default:
				fmt.Fprintln(a.stderr, "\ninterrupting running steps; they run again on resume")
				for _, id := range held {
					eng.Interrupt(id)
				}
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
