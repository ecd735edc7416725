package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/client"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// The schedule commands' part of backend.
type scheduleBackend interface {
	addSchedule(ctx context.Context, r *api.AddSchedule) (*job.Schedule, error)
	schedules(ctx context.Context) ([]*job.Schedule, error)
	removeSchedule(ctx context.Context, name string) error
}

func scheduleExists(name string) error {
	return exitCode(ExitFailed, fmt.Errorf("schedule %s exists; remove it first (drover schedule rm %s)", name, name))
}

func noSchedule(name string) error {
	return exitCode(ExitFailed, fmt.Errorf("no schedule %q (see drover schedule list)", name))
}

func (b *localBackend) addSchedule(ctx context.Context, r *api.AddSchedule) (*job.Schedule, error) {
	sc, err := b.eng.NewSchedule(ctx, engine.ScheduleSpec{Name: r.Name, Cron: r.Cron, Timezone: r.Timezone, Workflow: r.Workflow, Params: r.Params})
	if err != nil {
		return nil, err
	}
	if err := b.eng.Store().AddSchedule(ctx, sc); err != nil {
		if errors.Is(err, job.ErrExists) {
			return nil, scheduleExists(r.Name)
		}
		return nil, err
	}
	return sc, nil
}

func (b *localBackend) schedules(ctx context.Context) ([]*job.Schedule, error) {
	return b.eng.Store().Schedules(ctx)
}

func (b *localBackend) removeSchedule(ctx context.Context, name string) error {
	err := b.eng.Store().DeleteSchedule(ctx, name)
	if errors.Is(err, job.ErrNotFound) {
		return noSchedule(name)
	}
	return err
}

func (b *remoteBackend) addSchedule(ctx context.Context, r *api.AddSchedule) (*job.Schedule, error) {
	sc, err := b.c.AddSchedule(ctx, r)
	return sc, refused(err)
}

func (b *remoteBackend) schedules(ctx context.Context) ([]*job.Schedule, error) {
	scs, err := b.c.Schedules(ctx)
	return scs, refused(err)
}

func (b *remoteBackend) removeSchedule(ctx context.Context, name string) error {
	err := b.c.RemoveSchedule(ctx, name)
	if client.IsStatus(err, 404) {
		return noSchedule(name)
	}
	return refused(err)
}

func (a *app) scheduleCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "schedule",
		Short: "Fire registered workflows on cron schedules: add, list, rm",
		Long: `A schedule fires a registered workflow (drover workflow add) at the times of a
cron expression; each fire creates a queued job named schedule:NAME, which a
drover server runs. The servers fire the schedules: run at least one.`,
	}
	var (
		cronExpr, tz string
		params       []string
	)
	add := &cobra.Command{
		Use:   "add NAME --cron EXPR WORKFLOW [-p key=value]...",
		Short: "Fire WORKFLOW at the times of EXPR (5 fields, or @hourly, @daily, @every 10m...)",
		Long: `Fire the registered workflow WORKFLOW at the times of the cron expression EXPR:
five fields (minute hour day-of-month month day-of-week), or a descriptor:
@yearly, @monthly, @weekly, @daily, @hourly, @every DURATION. Times are UTC
unless --timezone (or a CRON_TZ=ZONE prefix) names an IANA time zone.

The parameters are checked against the workflow's main now, as drover run
checks them, and bound again at every fire to the workflow's current version.
A time missed while no server ran fires once, late, when one runs again.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name, wf := args[0], args[1]
			if cronExpr == "" {
				return usageErr("give the times with --cron EXPR")
			}
			// A schedule fires for months: it names a registered workflow,
			// whose versions are recorded, rather than a file that may
			// change or be gone by then (or not be on the server at all).
			if strings.ContainsRune(wf, '/') || strings.HasSuffix(wf, ".star") {
				return usageErr("%s: a schedule fires a registered workflow, not a file; register it first: drover workflow add NAME %s", wf, wf)
			}
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			sc, err := b.addSchedule(ctx, &api.AddSchedule{Name: name, Cron: cronExpr, Timezone: tz, Workflow: wf, Params: params})
			if err != nil {
				if fi, serr := os.Stat(wf); serr == nil && !fi.IsDir() && errors.Is(err, engine.ErrUsage) {
					return fmt.Errorf("%w\n%s is a file: register it first with drover workflow add NAME %s", err, wf, wf)
				}
				return err
			}
			fmt.Fprintf(a.stdout, "schedule %s: %s fires %s, next at %s\n", sc.Name, cronText(sc), sc.Workflow, fireTime(sc.NextFire))
			return nil
		},
	}
	add.Flags().StringVar(&cronExpr, "cron", "", "when to fire: a cron expression (5 fields, or @hourly, @daily, @every 10m...)")
	add.Flags().StringVar(&tz, "timezone", "", "the IANA time zone the expression reads in, such as Europe/Paris (default UTC)")
	add.Flags().StringArrayVarP(&params, "param", "p", nil, "a parameter of main, as key=value (repeatable)")

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List schedules: their next and last fire and the last job",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			scs, err := b.schedules(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				if scs == nil {
					scs = []*job.Schedule{}
				}
				return writeJSON(a.stdout, scs)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCRON\tWORKFLOW\tPARAMS\tNEXT FIRE\tLAST FIRE\tLAST JOB")
			for _, sc := range scs {
				p := strings.Join(sc.Params, " ")
				if p == "" {
					p = "-"
				}
				last := "-"
				if sc.LastJob != "" {
					last = sc.LastJob
				} else if sc.LastError != "" {
					last = "(none: see below)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sc.Name, cronText(sc), sc.Workflow, p, fireTime(sc.NextFire), fireTime(sc.LastFire), last)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, sc := range scs {
				if sc.LastError != "" {
					fmt.Fprintf(a.stdout, "schedule %s: its last fire made no job: %s\n", sc.Name, sc.LastError)
				}
			}
			return nil
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a schedule (the jobs it created stay)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			if err := b.removeSchedule(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "removed schedule %s\n", args[0])
			return nil
		},
	}
	c.AddCommand(add, list, rm)
	return c
}

// cronText is a schedule's expression with its time zone, when not UTC.
func cronText(sc *job.Schedule) string {
	if sc.Timezone == "" {
		return sc.Cron
	}
	return sc.Cron + " (" + sc.Timezone + ")"
}

// fireTime shows a fire time in the local zone, to the second.
func fireTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}
