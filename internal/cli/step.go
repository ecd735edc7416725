package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// stepCmd is drover step: PSFlow's blocks for any script (SPEC 6).
func (a *app) stepCmd() *cobra.Command {
	var wait, printID bool
	var exit int
	c := &cobra.Command{
		Use:   "step NAME -- COMMAND... | --wait NAME | --id | --exit CODE",
		Short: "Run a block of a script once per job (PSFlow blocks for bash, Python, PowerShell)",
		Long: `Run COMMAND once per job and keep its output and exit status: called
again in the same job, drover step prints the kept output and exits with the
kept status instead of running COMMAND.

The job is $DROVER_JOB. Without it, the job is the calling script's (the
process that runs drover step): created by its first block, which prints
its id on stderr, and found again by its later blocks. drover resume runs
a script job's script again from the top, with DROVER_JOB set.

  --wait NAME   the job waits here: exit 3 (stop the script: set -e, or
                || exit $?); once the job is resumed (drover resume), the
                script runs again from the top and the wait passes
  --id          print the job's id (creating the job), for
                export DROVER_JOB=$(drover step --id)
  --exit CODE   record the end of a script run directly (not by drover
                resume): completed for 0, failed otherwise; for
                trap 'drover step --exit $?' EXIT

A block whose command exits non-zero is kept too, and replays with its
status in the same run of the script; when the job is resumed it runs
again. Exit status: the command's (kept) status; 3 when the job waits;
1 when drover cannot do its part (unknown job, one that has ended, a store
error); 2 on a usage error. drover's flags go before NAME: everything after
NAME belongs to the block.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			modes := 0
			for _, on := range []bool{wait, printID, cmd.Flags().Changed("exit")} {
				if on {
					modes++
				}
			}
			if modes > 1 {
				return usageErr("give one of a block, --wait NAME, --id or --exit CODE")
			}
			// Flags stop at NAME, so the -- after it is an argument here.
			dash := cmd.ArgsLenAtDash()
			if dash < 0 {
				if i := slices.Index(args, "--"); i >= 0 {
					dash = i
					args = slices.Delete(slices.Clone(args), i, i+1)
				}
			}
			switch {
			case wait:
				if dash >= 0 || len(args) != 1 {
					return usageErr("drover step --wait NAME takes a name and no command")
				}
			case printID || cmd.Flags().Changed("exit"):
				if len(args) > 0 {
					return usageErr("drover step --id and --exit take no name or command")
				}
			case len(args) == 0:
				return usageErr("drover step NAME -- COMMAND...: no block name")
			case dash < 0:
				return usageErr("drover step NAME -- COMMAND...: put -- between the block's name and its command (drover step %s -- %s)", args[0], strings.Join(args[1:], " "))
			case dash != 1:
				return usageErr("drover step NAME -- COMMAND...: one name before --, got %q", strings.Join(args[:dash], " "))
			case len(args) == 1:
				return usageErr("drover step %s --: no command after --", args[0])
			}
			if len(args) > 0 {
				if err := checkBlockName(args[0]); err != nil {
					return err
				}
			}
			if a.serverURL() != "" {
				return usageErr("drover step works on the store (--db or DROVER_DB), not through a server: unset DROVER_SERVER (or drop --server) for the script's blocks")
			}
			eng, err := a.open(ctx)
			if err != nil {
				return err
			}
			id := a.getenv("DROVER_JOB")
			parent := os.Getppid()
			if cmd.Flags().Changed("exit") {
				_, err := eng.EndScriptOf(ctx, id, parent, exit)
				return a.stepErr(id, err)
			}
			sj, err := eng.OpenScriptJob(ctx, id, parent)
			if err != nil {
				return a.stepErr(id, err)
			}
			if sj.Created {
				fmt.Fprintf(a.stderr, "drover: job %s started for %s (DROVER_JOB=%s)\n", sj.Job.ID, strings.Join(sj.Script.Argv, " "), sj.Job.ID)
			}
			switch {
			case printID:
				fmt.Fprintln(a.stdout, sj.Job.ID)
				return nil
			case wait:
				passed, err := eng.WaitBlock(ctx, sj, args[0])
				if err != nil {
					return a.stepErr(id, err)
				}
				if passed {
					return nil
				}
				fmt.Fprintf(a.stderr, "drover: job %s is waiting at %s; continue it with: drover resume %s\n", sj.Job.ID, args[0], sj.Job.ID)
				return exitCode(ExitPending, nil)
			}
			// The terminal's Ctrl-C reaches the command too (same process
			// group); drover stays to record how it ended. SIGTERM and SIGHUP
			// sent to drover alone are passed on to it.
			intr := make(chan os.Signal, 1)
			signal.Notify(intr, os.Interrupt)
			defer signal.Stop(intr)
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
			defer signal.Stop(sigs)
			out, err := eng.RunBlock(ctx, sj, engine.Block{
				Name: args[0], Argv: args[1:], Stdin: a.stdin, Stdout: a.stdout, Stderr: a.stderr,
				Signals: sigs,
				Notice:  func(s string) { fmt.Fprintln(a.stderr, "drover:", s) },
			})
			if err != nil {
				return a.stepErr(id, err)
			}
			if out.Code != 0 {
				return exitCode(out.Code, nil)
			}
			return nil
		},
	}
	// Flags come before NAME: after it everything is the block's, so
	// that a command's own flags are never taken for drover's.
	c.Flags().SetInterspersed(false)
	c.Flags().BoolVar(&wait, "wait", false, "the job waits at this point until it is resumed: exit 3")
	c.Flags().BoolVar(&printID, "id", false, "print the job's id (creating the job)")
	c.Flags().IntVar(&exit, "exit", 0, "record the end of a script run directly, with its exit status")
	return c
}

// checkBlockName keeps names usable as journal keys and in messages.
func checkBlockName(name string) error {
	if name == "" || strings.HasPrefix(name, "-") || strings.ContainsAny(name, " \t\n#") {
		return usageErr("block name %q: use a word (letters, digits, -_./:), not starting with -", name)
	}
	return nil
}

// stepErr turns the engine's refusals into drover step's exit statuses.
func (a *app) stepErr(id string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, job.ErrNotFound) && id != "":
		return exitCode(ExitFailed, fmt.Errorf("DROVER_JOB=%s: no such job in %s (unset DROVER_JOB to start a new job)", id, a.describeDB()))
	case errors.Is(err, engine.ErrNotScript):
		return exitCode(ExitUsage, fmt.Errorf("DROVER_JOB=%s: %w: drover step works only in the jobs of scripts it created; unset DROVER_JOB to start one", id, err))
	case errors.Is(err, engine.ErrScriptWaiting):
		return exitCode(ExitPending, err)
	case errors.Is(err, engine.ErrScriptEnded):
		return exitCode(ExitFailed, fmt.Errorf("%w; unset DROVER_JOB (or drover rm it) to start a new job", err))
	case errors.Is(err, context.Canceled):
		return exitCode(ExitFailed, err)
	}
	return err
}
