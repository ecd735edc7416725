package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"
)

// schemaStore is what drover db needs of a store.
type schemaStore interface {
	SchemaVersion(ctx context.Context) (current, latest int, err error)
	Migrate(ctx context.Context) error
	Close() error
}

func (a *app) dbCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "db",
		Short: "The store's schema: status, migrate",
	}
	open := func(ctx context.Context) (schemaStore, string, error) {
		path, err := a.dbPath()
		if err != nil {
			return nil, "", err
		}
		logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		st, err := openStore(ctx, path, logger, true)
		if err != nil {
			return nil, "", storeError(err)
		}
		ss, ok := st.(schemaStore)
		if !ok {
			_ = st.Close()
			return nil, "", fmt.Errorf("this store does not report its schema")
		}
		return ss, redactDB(path), nil
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the store's schema version and the one this drover needs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, where, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer st.Close()
			cur, latest, err := st.SchemaVersion(cmd.Context())
			if err != nil {
				return err
			}
			state := "up to date"
			switch {
			case cur < latest:
				state = "needs migrating: drover db migrate"
			case cur > latest:
				state = "newer than this drover: upgrade drover"
			}
			fmt.Fprintf(a.stdout, "store:   %s\nschema:  version %d\ndrover:  version %d\nstate:   %s\n", where, cur, latest, state)
			return nil
		},
	}
	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Bring the store's schema to this drover's version (also done on first use)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, where, err := open(cmd.Context())
			if err != nil {
				return err
			}
			defer st.Close()
			before, _, err := st.SchemaVersion(cmd.Context())
			if err != nil {
				return err
			}
			if err := st.Migrate(cmd.Context()); err != nil {
				return err
			}
			after, _, err := st.SchemaVersion(cmd.Context())
			if err != nil {
				return err
			}
			if before == after {
				fmt.Fprintf(a.stdout, "%s: schema version %d, up to date\n", where, after)
			} else {
				fmt.Fprintf(a.stdout, "%s: schema migrated from version %d to %d\n", where, before, after)
			}
			return nil
		},
	}
	c.AddCommand(status, migrate)
	return c
}
