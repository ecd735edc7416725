// Package cli is drover's command line: it parses flags, opens the store,
// drives the engine and presents jobs. One presentation serves every
// command, whichever store is behind it.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/client"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/local"
	"github.com/drover/drover/internal/remote"
	"github.com/drover/drover/internal/store/postgres"
	"github.com/drover/drover/internal/store/sqlite"
)

// Exit codes of SPEC section 4.
const (
	ExitOK      = 0
	ExitFailed  = 1
	ExitUsage   = 2
	ExitPending = 3 // suspended or waiting
)

// exitError carries an exit code; its message, if any, was not printed yet.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

func exitCode(code int, err error) error { return &exitError{code: code, err: err} }

func usageErr(format string, args ...any) error {
	return exitCode(ExitUsage, fmt.Errorf(format, args...))
}

// app is the state shared by the commands of one invocation.
type app struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	dbFlag         string
	store          engine.Store
	eng            *engine.Engine
	getenv         func(string) string
	isTerminal     bool

	remote            *lazyRemote
	acceptNewHostKeys bool

	// Client mode (--server, DROVER_SERVER): see clientmode.go.
	serverFlag string
	cl         *client.Client
	// logger, when set before open, is the engine's and the SSH
	// manager's (drover server logs everything; other commands warnings).
	logger *slog.Logger
}

// Main runs drover with args and returns the process's exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr, stdin: stdin, getenv: os.Getenv, isTerminal: isTerminal(stderr)}
	defer a.close()
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, "drover:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "drover:", err)
	if errors.Is(err, engine.ErrUsage) || isFlagError(err) {
		return ExitUsage
	}
	return ExitFailed
}

func isFlagError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown flag", "unknown command", "unknown shorthand", "flag needs an argument",
		"invalid argument", "accepts ", "requires at least", "requires exactly", "required flag"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "drover",
		Short: "Durable, resumable workflows for operations work across many machines",
		Long: `drover runs workflows written in Starlark as durable jobs: persisted from
the moment they are created, checkpointed as they go, and resumable after a
crash, a reboot, an operator's suspend or a days-long wait for approval.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.dbFlag, "db", "", "store: a SQLite file path or a postgres:// URL (default $DROVER_DB, else $XDG_DATA_HOME/drover/drover.db)")
	root.PersistentFlags().StringVar(&a.serverFlag, "server", "", "client mode: work through this drover server's API (default $DROVER_SERVER), with the token in $DROVER_TOKEN")
	root.AddCommand(
		a.runCmd(), a.jobsCmd(), a.showCmd(), a.outputCmd(), a.logsCmd(),
		a.resumeCmd(), a.suspendCmd(), a.stopCmd(), a.rmCmd(), a.waitCmd(), a.signalCmd(),
		a.workflowCmd(), a.scheduleCmd(), a.serverCmd(), a.tokenCmd(), a.dbCmd(), a.stepCmd(),
	)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return exitCode(ExitUsage, fmt.Errorf("%w\nsee 'drover %s --help'", err, c.Name()))
	})
	return root
}

// dbPath resolves where the store is: --db, DROVER_DB, then the XDG data
// directory.
func (a *app) dbPath() (string, error) {
	if a.dbFlag != "" {
		return a.dbFlag, nil
	}
	if v := a.getenv("DROVER_DB"); v != "" {
		return v, nil
	}
	dataHome := a.getenv("XDG_DATA_HOME")
	if dataHome == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no --db, no DROVER_DB and no home directory: %w", err)
		}
		dataHome = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(dataHome, "drover", "drover.db"), nil
}

// open opens the store and an engine over it, once per invocation.
func (a *app) open(ctx context.Context) (*engine.Engine, error) {
	if a.eng != nil {
		return a.eng, nil
	}
	o, err := a.engineOptions(ctx)
	if err != nil {
		return nil, err
	}
	a.eng = engine.New(o)
	return a.eng, nil
}

// engineOptions opens the store and the executors an engine runs with.
func (a *app) engineOptions(ctx context.Context) (engine.Options, error) {
	path, err := a.dbPath()
	if err != nil {
		return engine.Options{}, err
	}
	// Warnings (a host key recorded under --accept-new-host-keys, a lease
	// that could not be renewed, a database connection lost) go to
	// stderr; nothing else is logged.
	logger := a.logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	st, err := openStore(ctx, path, logger, false)
	if err != nil {
		return engine.Options{}, storeError(err)
	}
	a.store = st
	a.remote = &lazyRemote{opts: remote.Options{AcceptNewHostKeys: a.acceptNewHostKeys, Logger: logger}}
	return engine.Options{
		Store:  st,
		Local:  &local.Executor{Supervisor: supervisor()},
		Remote: a.remote,
		Copier: a.remote,
		Lease:  durationEnv(a.getenv("DROVER_LEASE"), 30*time.Second),
		Logger: logger,
	}, nil
}

// storeError adds what to do to the store's errors.
func storeError(err error) error {
	switch {
	case errors.Is(err, job.ErrStoreLocked):
		return fmt.Errorf("%w\nanother process holds the store's lock; retry when it is done", err)
	}
	return err
}

func durationEnv(v string, def time.Duration) time.Duration {
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return def
	}
	return d
}

func (a *app) close() {
	if a.eng != nil {
		a.eng.Close()
	}
	if a.remote != nil {
		a.remote.close()
	}
	if a.store != nil {
		_ = a.store.Close()
	}
}

// getJob loads a job by id with a clear error for unknown ids.
func (a *app) getJob(ctx context.Context, id string) (*job.Job, error) {
	eng, err := a.open(ctx)
	if err != nil {
		return nil, err
	}
	j, err := eng.Store().Job(ctx, id)
	if errors.Is(err, job.ErrNotFound) {
		return nil, exitCode(ExitFailed, fmt.Errorf("no job %q in %s (see drover jobs)", id, a.describeDB()))
	}
	return j, err
}

func (a *app) describeDB() string {
	p, _ := a.dbPath()
	return redactDB(p)
}

// supervisor is this binary, which runs local commands under a supervisor
// that kills them if drover dies; empty when it cannot be found.
func supervisor() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	return exe
}

// isPostgres reports whether --db names a PostgreSQL database.
func isPostgres(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://")
}

// openStore opens a SQLite file or a PostgreSQL database. With noMigrate
// a PostgreSQL schema is left as it is, for drover db.
func openStore(ctx context.Context, db string, logger *slog.Logger, noMigrate bool) (engine.Store, error) {
	if isPostgres(db) {
		return postgres.OpenOptions(ctx, db, postgres.Options{Logger: logger, NoMigrate: noMigrate})
	}
	return sqlite.Open(ctx, db)
}

// redactDB hides a PostgreSQL URL's password for messages.
func redactDB(db string) string {
	if isPostgres(db) {
		return postgres.Redact(db)
	}
	return db
}
