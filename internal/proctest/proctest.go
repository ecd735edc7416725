// Package proctest runs the drover binary as a test's child process, as a
// user or a crash would see it: built once per test binary from the
// module's own source, started, killed with SIGKILL, waited for.
package proctest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Main builds drover into a temporary directory, sets *bin to its path
// and runs m's tests; it returns their exit code. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(proctest.Main(m, &droverBin)) }
func Main(m *testing.M, bin *string) int {
	tmp, err := os.MkdirTemp("", "drover-proctest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "proctest:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if *bin, err = Build(tmp); err != nil {
		fmt.Fprintln(os.Stderr, "proctest:", err)
		return 1
	}
	return m.Run()
}

// Build builds ./cmd/drover of the module the test runs in into dir and
// returns the binary's path.
func Build(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the drover module")
	}
	bin := filepath.Join(dir, "drover")
	build := exec.Command("go", "build", "-o", bin, "./cmd/drover")
	build.Dir = filepath.Dir(gomod)
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building drover: %w\n%s", err, out)
	}
	return bin, nil
}

// Proc is a started drover process. Stdout, Stderr and Code are complete
// once it has ended (Exited, Wait or Kill).
type Proc struct {
	Args   []string
	Cmd    *exec.Cmd
	Stdout bytes.Buffer
	Stderr bytes.Buffer
	Code   int
	done   chan struct{}
}

// Start starts cmd, whose arguments after the program are args, and
// fails the test if it cannot.
func Start(t testing.TB, cmd *exec.Cmd, args []string) *Proc {
	t.Helper()
	p := &Proc{Args: args, Cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.Stdout
	cmd.Stderr = &p.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting drover %v: %v", args, err)
	}
	go func() {
		err := cmd.Wait()
		p.Code = ExitCode(err)
		close(p.done)
	}()
	return p
}

// ExitCode is the status a shell would report for a command that ended
// with err: 128+N for a signal N.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}

// Kill sends SIGKILL and waits for the process to be gone. It reports
// whether the process was still running.
func (p *Proc) Kill() bool {
	select {
	case <-p.done:
		return false
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return true
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to end by itself and returns its exit
// code; after timeout it kills it and fails the test.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.Code
	case <-time.After(timeout):
		p.Kill()
		t.Fatalf("drover %v did not end within %s\nstdout:\n%s\nstderr:\n%s", p.Args, timeout, p.Stdout.String(), p.Stderr.String())
		return -1
	}
}

func (p *Proc) String() string {
	return fmt.Sprintf("drover %s (exit %d)\nstdout:\n%s\nstderr:\n%s", strings.Join(p.Args, " "), p.Code, p.Stdout.String(), p.Stderr.String())
}
