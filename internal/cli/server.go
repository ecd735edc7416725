package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/drover/drover/internal/server"
)

type serverFlags struct {
	listen     string
	maxRunning int
	tlsCert    string
	tlsKey     string
	grace      time.Duration
	noAuth     bool
	logFormat  string
	logLevel   string
	maxBody    int64
}

func (a *app) serverCmd() *cobra.Command {
	var f serverFlags
	c := &cobra.Command{
		Use:   "server [--listen ADDR] [--max-running N]",
		Short: "Run the engine as a service with an HTTP API",
		Long: `Run drover as a long-lived service on the store: it runs queued jobs in
submission order, at most --max-running at once, wakes jobs whose timers
are due, resumes jobs whose engine died, and serves the HTTP API that the
command line's client mode (--server URL or DROVER_SERVER, with
DROVER_TOKEN) and other programs use (docs/api.md).

Requests need a bearer token (drover token create). On any address but a
loopback one the server needs TLS (--tls-cert and --tls-key).

SIGTERM or Ctrl-C shuts it down: it takes no new jobs, suspends the
running ones at their next safe point, interrupts the steps still running
after --grace, and queues the suspended jobs again so that the next
server continues them. A second signal exits at once; jobs still held are
then taken up after their lease expires.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.serve(cmd.Context(), &f)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.listen, "listen", "127.0.0.1:7070", "the address to listen on, HOST:PORT")
	fl.IntVar(&f.maxRunning, "max-running", 64, "the most jobs running at once; the rest wait queued (MaxRunningWorkflows)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "serve HTTPS with this PEM certificate (chain)")
	fl.StringVar(&f.tlsKey, "tls-key", "", "the certificate's PEM private key")
	fl.DurationVar(&f.grace, "grace", 30*time.Second, "on shutdown, how long running jobs get to reach a safe point before their steps are interrupted")
	fl.BoolVar(&f.noAuth, "insecure-no-auth", false, "serve every request as an admin without a token (loopback addresses only)")
	fl.StringVar(&f.logFormat, "log-format", "json", "log format on stderr: json or text")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fl.Int64Var(&f.maxBody, "max-body", 8<<20, "the largest request body, in bytes")
	fl.BoolVar(&a.acceptNewHostKeys, "accept-new-host-keys", false, "record the keys of hosts known_hosts does not know yet (a changed key still fails)")
	return c
}

// isLoopback reports whether host (of HOST:PORT) is a loopback address.
// An empty host listens on every address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

func (a *app) serve(ctx context.Context, f *serverFlags) error {
	host, _, err := net.SplitHostPort(f.listen)
	if err != nil {
		return usageErr("--listen %q: want HOST:PORT (%v)", f.listen, err)
	}
	useTLS := f.tlsCert != "" || f.tlsKey != ""
	if useTLS && (f.tlsCert == "" || f.tlsKey == "") {
		return usageErr("give both --tls-cert and --tls-key")
	}
	if !isLoopback(host) {
		if !useTLS {
			return usageErr("refusing to listen on %s without TLS: tokens would cross the network in clear; give --tls-cert and --tls-key, or listen on a loopback address (127.0.0.1:PORT)", f.listen)
		}
		if f.noAuth {
			return usageErr("refusing to listen on %s without auth: --insecure-no-auth is for loopback addresses only", f.listen)
		}
	}
	if f.maxRunning <= 0 {
		return usageErr("--max-running must be 1 or more")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return usageErr("--log-level: %v", err)
	}
	var h slog.Handler
	switch f.logFormat {
	case "json":
		h = slog.NewJSONHandler(a.stderr, &slog.HandlerOptions{Level: level})
	case "text":
		h = slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level})
	default:
		return usageErr("--log-format: want json or text, got %q", f.logFormat)
	}
	logger := slog.New(h)
	var tlsConf *tls.Config
	if useTLS {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return usageErr("--tls-cert/--tls-key: %v", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	a.logger = logger
	eo, err := a.engineOptions(ctx)
	if err != nil {
		return err
	}
	o := server.Options{Engine: eo, MaxRunning: f.maxRunning, Grace: f.grace, MaxBody: f.maxBody, Logger: logger,
		SSH: a.remote.metrics}
	if f.noAuth {
		logger.Warn("serving without auth: every request acts as an admin", "listen", f.listen)
	} else {
		ts, ok := a.store.(server.TokenStore)
		if !ok {
			return errors.New("this store does not keep API tokens")
		}
		o.Auth = ts
		if toks, err := ts.Tokens(ctx); err == nil && len(toks) == 0 {
			logger.Warn("no API tokens yet: every request will be refused; create one with drover token create NAME --role admin")
		}
	}
	srv, err := server.New(o)
	if err != nil {
		return err
	}
	defer srv.Close()

	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return exitCode(ExitFailed, fmt.Errorf("listening on %s: %w", f.listen, err))
	}
	hs := &http.Server{
		Handler:           srv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		TLSConfig:         tlsConf,
		ErrorLog:          slog.NewLogLogger(h, slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	served := make(chan error, 1)
	go func() {
		if tlsConf != nil {
			served <- hs.ServeTLS(ln, "", "")
		} else {
			served <- hs.Serve(ln)
		}
	}()
	scheme := "http"
	if tlsConf != nil {
		scheme = "https"
	}
	logger.Info("listening", "url", scheme+"://"+ln.Addr().String(), "auth", !f.noAuth, "max_running", f.maxRunning)

	sigCtx, stopSignals := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	runCtx, stopRun := context.WithCancel(sigCtx)
	defer stopRun()
	go func() {
		select {
		case err := <-served:
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("serving HTTP", "err", err)
			}
			stopRun()
		case <-runCtx.Done():
		}
	}()
	go func() {
		<-sigCtx.Done()
		// A second signal ends the process at once.
		stopSignals()
	}()
	runErr := srv.Run(runCtx)
	srv.Close()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		_ = hs.Close()
	}
	logger.Info("stopped")
	if runErr != nil {
		return runErr
	}
	return nil
}
