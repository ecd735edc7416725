package cli

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/server"
)

// tokenStore opens the store for drover token. Tokens are managed on the
// store, never through a server: whoever may write the store may make
// tokens.
func (a *app) tokenStore(ctx context.Context) (server.TokenStore, error) {
	if _, err := a.open(ctx); err != nil {
		return nil, err
	}
	ts, ok := a.store.(server.TokenStore)
	if !ok {
		return nil, errors.New("this store does not keep API tokens")
	}
	return ts, nil
}

func (a *app) tokenCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "token",
		Short: "Manage drover server's API tokens: create, list, rm",
		Long: `Manage the bearer tokens drover server accepts. They are kept in the store
(--db, DROVER_DB), whatever --server says: run these commands where the
server's store is.

Roles: a viewer reads every job, workflow and metric; an operator also
runs jobs and acts on the jobs they submitted (and sees only those); an
admin acts on every job and manages workflows.`,
	}
	var role string
	create := &cobra.Command{
		Use:   "create NAME --role admin|operator|viewer",
		Short: "Create a token for user NAME and print it (it is shown once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			name := args[0]
			if err := auth.CheckName(name); err != nil {
				return usageErr("%v", err)
			}
			r, err := auth.ParseRole(role)
			if err != nil {
				return usageErr("--role: %v", err)
			}
			ts, err := a.tokenStore(ctx)
			if err != nil {
				return err
			}
			secret, hash, err := auth.NewSecret()
			if err != nil {
				return err
			}
			if err := ts.CreateToken(ctx, &auth.Token{Name: name, Role: r, Hash: hash}); err != nil {
				if errors.Is(err, auth.ErrExists) {
					return exitCode(ExitFailed, fmt.Errorf("a token named %s exists; remove it first (drover token rm %s) to replace it", name, name))
				}
				return err
			}
			fmt.Fprintln(a.stdout, secret)
			fmt.Fprintf(a.stderr, "token %s (%s) created. It is shown this once and only its hash is kept: store it now.\n"+
				"use it with: DROVER_SERVER=http://HOST:PORT DROVER_TOKEN=<token> drover jobs\n", name, r)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "", "the token's role: admin, operator or viewer (required)")
	_ = create.MarkFlagRequired("role")

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens: name, role, when created and last used",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ts, err := a.tokenStore(ctx)
			if err != nil {
				return err
			}
			toks, err := ts.Tokens(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				if toks == nil {
					toks = []*auth.Token{}
				}
				return writeJSON(a.stdout, toks)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tROLE\tCREATED\tLAST USED")
			for _, t := range toks {
				used := "never"
				if !t.LastUsed.IsZero() {
					used = ago(t.LastUsed)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, t.Role, ago(t.Created), used)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	rm := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove tokens: requests with them are refused from then on",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			ts, err := a.tokenStore(ctx)
			if err != nil {
				return err
			}
			code := ExitOK
			for _, name := range args {
				if err := ts.DeleteToken(ctx, name); err != nil {
					if errors.Is(err, job.ErrNotFound) {
						err = fmt.Errorf("no token named %s (see drover token list)", name)
					}
					fmt.Fprintf(a.stderr, "drover: %v\n", err)
					code = ExitFailed
					continue
				}
				fmt.Fprintf(a.stdout, "removed token %s\n", name)
			}
			return exitCode(code, nil)
		},
	}
	c.AddCommand(create, list, rm)
	return c
}
