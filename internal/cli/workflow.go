package cli

import (
	"fmt"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/script"
)

func absPath(p string) (string, error) { return filepath.Abs(p) }

// worst combines exit codes: a failure outranks a pending job, which
// outranks success.
func worst(a, b int) int {
	rank := func(c int) int {
		switch c {
		case ExitOK:
			return 0
		case ExitPending:
			return 1
		case ExitUsage:
			return 2
		}
		return 3
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

func (a *app) workflowCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "workflow",
		Short: "Register workflows by name: add, list, show, rm",
	}
	var asJSON bool
	add := &cobra.Command{
		Use:   "add NAME FILE",
		Short: "Register FILE (and the files it loads) as workflow NAME, or as its next version",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			src, err := script.ReadSource(args[1])
			if err != nil {
				return exitCode(ExitUsage, err)
			}
			wf, err := b.addWorkflow(ctx, args[0], src)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "workflow %s version %d (%d files, source %s)\n", wf.Name, wf.Version, len(src.Files), wf.Digest[:12])
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List registered workflows",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			wfs, err := b.workflows(ctx)
			if err != nil {
				return err
			}
			sort.Slice(wfs, func(i, k int) bool { return wfs[i].Name < wfs[k].Name })
			if asJSON {
				if wfs == nil {
					wfs = []*job.Workflow{}
				}
				return writeJSON(a.stdout, wfs)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tENTRY\tSOURCE\tUPDATED")
			for _, w := range wfs {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", w.Name, w.Version, w.Entry, w.Digest[:12], ago(w.Updated))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var showJSON bool
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a registered workflow: its parameters and source",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			w, err := b.workflow(ctx, args[0])
			if err != nil {
				return err
			}
			if showJSON {
				return writeJSON(a.stdout, w)
			}
			wf := w.Workflow
			fmt.Fprintf(a.stdout, "Workflow:  %s\nVersion:   %d\nEntry:     %s\nSignature: %s\nSource:    %s\nUpdated:   %s\n",
				wf.Name, wf.Version, wf.Entry, w.Signature, wf.Digest, wf.Updated.Local().Format(time.RFC3339))
			names := make([]string, 0, len(w.Files))
			for n := range w.Files {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				fmt.Fprintf(a.stdout, "\n--- %s\n%s", n, w.Files[n])
			}
			return nil
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Unregister a workflow (its jobs keep their stored source)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := a.backend(ctx)
			if err != nil {
				return err
			}
			if err := b.removeWorkflow(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "removed workflow %s\n", args[0])
			return nil
		},
	}
	c.AddCommand(add, list, show, rm)
	return c
}
