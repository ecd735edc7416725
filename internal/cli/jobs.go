package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/job"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func parseStates(s string) ([]job.State, error) {
	if s == "" {
		return nil, nil
	}
	var out []job.State
	for _, p := range strings.Split(s, ",") {
		st, err := job.ParseState(strings.TrimSpace(p))
		if err != nil {
			return nil, usageErr("%v", err)
		}
		out = append(out, st)
	}
	return out, nil
}

func (a *app) jobsCmd() *cobra.Command {
	var state string
	var asJSON, all bool
	var limit int
	c := &cobra.Command{
		Use:   "jobs",
		Short: "List jobs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			states, err := parseStates(state)
			if err != nil {
				return err
			}
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			views, err := b.listJobs(ctx, jobsQuery{states: states, all: all, limit: limit})
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, views)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tSTATE\tSTEPS\tPROGRESS\tCREATED")
			for _, v := range views {
				prog := ""
				if v.Progress.Done > 0 || v.Progress.Total > 0 || v.Progress.Message != "" {
					prog = progressText(v.Progress)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", v.ID, v.Name, v.State, v.Steps, prog, ago(v.Created))
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&state, "state", "", "only jobs in these states (comma-separated)")
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.Flags().BoolVar(&all, "all", false, "include child jobs")
	c.Flags().IntVar(&limit, "limit", 0, "at most N jobs")
	return c
}

func containsState(states []job.State, s job.State) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}

func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return t.Local().Format("2006-01-02 15:04")
}

func (a *app) showCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show JOB",
		Short: "Show a job: state, parameters, step tree, children",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			v, err := b.show(ctx, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(a.stdout, v)
			}
			a.printShow(*v)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}

func (a *app) printShow(v api.Show) {
	j := v.Job
	w := tabwriter.NewWriter(a.stdout, 0, 4, 1, ' ', 0)
	row := func(k, val string) {
		if val != "" {
			fmt.Fprintf(w, "%s:\t%s\n", k, val)
		}
	}
	row("Job", j.ID)
	row("Name", j.Name)
	row("State", string(j.State))
	if j.Workflow != "" {
		row("Workflow", j.Workflow)
	} else {
		row("File", j.Path)
	}
	row("Created by", j.CreatedBy)
	row("Parent", j.ParentID)
	row("Target", j.Target)
	row("Input", string(j.Input))
	row("Persist", string(j.Persist))
	row("On error", string(j.OnError))
	if j.Timeout > 0 {
		row("Timeout", j.Timeout.String())
	}
	row("Created", j.Created.Local().Format(time.RFC3339))
	if !j.Started.IsZero() {
		row("Started", j.Started.Local().Format(time.RFC3339))
	}
	if !j.Ended.IsZero() {
		row("Ended", fmt.Sprintf("%s (took %s)", j.Ended.Local().Format(time.RFC3339), j.Ended.Sub(j.Started).Round(time.Millisecond)))
	}
	if j.State == job.Waiting {
		if len(j.WaitFor) > 0 {
			row("Waiting for", "signal "+strings.Join(j.WaitFor, ", "))
		}
		if !j.WakeAt.IsZero() {
			row("Wakes at", j.WakeAt.Local().Format(time.RFC3339))
		}
	}
	if j.Owner != "" && (j.State == job.Running || j.State == job.Interrupted) {
		row("Held by", fmt.Sprintf("%s (lease until %s)", j.Owner, j.LeaseUntil.Local().Format(time.RFC3339)))
	}
	if j.Progress.Done > 0 || j.Progress.Total > 0 || j.Progress.Message != "" {
		row("Progress", progressText(j.Progress))
	}
	row("Reason", j.Reason)
	row("Runs", strconv.Itoa(j.Runs))
	if len(j.Result) > 0 && string(j.Result) != "null" {
		row("Result", string(j.Result))
	}
	w.Flush()
	if j.Error != "" {
		fmt.Fprintf(a.stdout, "Error:\n%s\n", indentText(j.Error, "  "))
	}
	if len(v.Children) > 0 {
		var parts []string
		total := 0
		for _, s := range job.AllStates {
			if n := v.Children[s]; n > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", n, s))
				total += n
			}
		}
		fmt.Fprintf(a.stdout, "Children: %d (%s)\n", total, strings.Join(parts, ", "))
		if len(v.Failed) > 0 {
			fmt.Fprintln(a.stdout, "Failed hosts:")
			for _, c := range v.Failed {
				fmt.Fprintf(a.stdout, "  %s (%s):\n%s\n", c.Host, c.ID, indentText(c.Error, "    "))
			}
		}
	}
	if len(v.Steps) == 0 {
		fmt.Fprintln(a.stdout, "Steps: none recorded")
		return
	}
	fmt.Fprintln(a.stdout, "Steps:")
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  KEY\tACTIVITY\tHOST\tENGINE\tSTATUS\tATTEMPTS\tDURATION\tAT")
	for _, s := range v.Steps {
		depth := strings.Count(s.Key, "/b")
		key := strings.Repeat("  ", depth) + s.Key
		dur := ""
		if !s.Ended.IsZero() {
			dur = s.Ended.Sub(s.Started).Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", key, s.Activity, s.Host, engineName(s.Engine), s.Status, s.Attempts, dur, s.Position)
	}
	tw.Flush()
}

// engineName is how drover show names the engine that ran a step: its
// host and process id (the lease owner id without the process's start
// time and the random part; --json has it whole).
func engineName(owner string) string {
	if f := strings.SplitN(owner, ":", 3); len(f) == 3 {
		return f[0] + ":" + f[1]
	}
	return owner
}

func indentText(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}

func (a *app) outputCmd() *cobra.Command {
	return a.streamCmd(job.Output, "output", "Print a job's output stream")
}
func (a *app) logsCmd() *cobra.Command {
	return a.streamCmd(job.Log, "logs", "Print a job's log: print() lines and command output")
}

func (a *app) streamCmd(s job.Stream, name, short string) *cobra.Command {
	var follow, asJSON bool
	var after int64
	c := &cobra.Command{
		Use:   name + " JOB",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			j, err := b.getJob(ctx, args[0])
			if err != nil {
				return err
			}
			enc := json.NewEncoder(a.stdout)
			return b.stream(ctx, j.ID, s, after, follow, func(r job.Record) error {
				switch {
				case asJSON:
					return enc.Encode(r)
				case s == job.Output:
					_, err := fmt.Fprintln(a.stdout, formatOutput(r.Value))
					return err
				default:
					_, err := fmt.Fprintln(a.stdout, formatLog(r))
					return err
				}
			})
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new records until the job stops running")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON record per line")
	c.Flags().Int64Var(&after, "after", 0, "start after the record with this sequence number (--json shows them), to re-attach where a follower stopped")
	return c
}
