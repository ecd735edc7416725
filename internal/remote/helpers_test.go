package remote_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/remote"
	"github.com/drover/drover/internal/remote/sshtest"
)

// testOptions points a manager at the test hosts only: their known_hosts,
// their key, an empty ssh_config, no agent, and a home without keys.
func testOptions(t testing.TB, s *sshtest.Server) remote.Options {
	return remote.Options{
		SSHConfig:      s.SSHConfig,
		KnownHosts:     []string{s.KnownHosts},
		IdentityFiles:  []string{s.ClientKey},
		AgentSocket:    "none",
		User:           s.User,
		HomeDir:        t.TempDir(),
		ConnectTimeout: 5 * time.Second,
		RetryInterval:  50 * time.Millisecond,
		KillGrace:      500 * time.Millisecond,
		// The test login's home outlives test runs: keep step state with
		// the server, so no run finds another's.
		RunDir: filepath.Join(s.UserDir, "run"),
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

func newManager(t testing.TB, s *sshtest.Server, mod func(*remote.Options)) *remote.Manager {
	t.Helper()
	o := testOptions(t, s)
	if mod != nil {
		mod(&o)
	}
	m, err := remote.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// logRecorder keeps the manager's log lines for assertions and passes
// them to t.Log.
type logRecorder struct {
	t     testing.TB
	mu    sync.Mutex
	lines []string
}

func (r *logRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.lines = append(r.lines, string(p))
	r.mu.Unlock()
	r.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// matching returns the recorded lines that contain every part.
func (r *logRecorder) matching(parts ...string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
next:
	for _, l := range r.lines {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

func recordLogs(t testing.TB) (*logRecorder, func(*remote.Options)) {
	r := &logRecorder{t: t}
	return r, func(o *remote.Options) {
		o.Logger = slog.New(slog.NewTextHandler(r, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
}

func engineHost(s *sshtest.Server, h sshtest.Host) engine.Host {
	return engine.Host{Name: h.Name, Addr: h.Addr, Port: h.Port, User: s.User}
}

func execOK(t testing.TB, m *remote.Manager, c *engine.Command) *engine.CommandResult {
	t.Helper()
	res, err := m.Exec(context.Background(), c)
	if err != nil {
		t.Fatalf("Exec %q on %s: %v", c.Cmd, c.Host.Name, err)
	}
	return res
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readLines(t testing.TB, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// defaultRunDir is where the wrapper keeps step state by default.
func defaultRunDir(s *sshtest.Server) string { return filepath.Join(s.Home, ".drover", "run") }

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
