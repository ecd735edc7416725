// Package local runs sh() steps on the controller itself.
package local

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/drover/drover/internal/engine"
)

// Executor runs commands with /bin/sh -c in their own process group, so
// that a stop or a timeout kills the command and everything it started.
type Executor struct {
	// Shell is the shell to run commands with; default /bin/sh.
	Shell string
	// Grace is how long a cancelled command gets after SIGTERM before
	// SIGKILL. Default 2s.
	Grace time.Duration
	// Supervisor, when set, is the drover binary: commands run under
	// `drover __supervise`, which kills them if this process dies.
	Supervisor string
}

var _ engine.Executor = (*Executor)(nil)

// Exec runs c.Cmd and waits for it.
func (x *Executor) Exec(ctx context.Context, c *engine.Command) (*engine.CommandResult, error) {
	shell := x.Shell
	if shell == "" {
		shell = "/bin/sh"
	}
	grace := x.Grace
	if grace <= 0 {
		grace = 2 * time.Second
	}
	cmd := exec.Command(shell, "-c", c.Cmd)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if x.Supervisor != "" {
		cmd = exec.Command(x.Supervisor, SuperviseArg, shell, "-c", c.Cmd)
		// argv[0] names the command, whatever file the binary is.
		cmd.Args[0] = "drover"
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	}
	cmd.Env = os.Environ()
	for k, v := range c.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, "DROVER_JOB="+c.JobID, "DROVER_STEP="+c.StepKey)
	if c.Stdin != nil {
		cmd.Stdin = bytes.NewReader(c.Stdin)
	}
	var stdout, stderr bytes.Buffer
	var wg sync.WaitGroup
	outR, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	errR, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	// The parent-death signal fires when the thread that started the
	// child exits: start it from a thread that stays.
	runtime.LockOSThread()
	err = cmd.Start()
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", shell, err)
	}
	copyLines := func(r io.Reader, buf *bytes.Buffer, stream string) {
		defer wg.Done()
		br := bufio.NewReader(r)
		for {
			line, err := br.ReadString('\n')
			if len(line) > 0 {
				buf.WriteString(line)
				if c.Line != nil {
					c.Line(stream, trimNL(line))
				}
			}
			if err != nil {
				return
			}
		}
	}
	wg.Add(2)
	go copyLines(outR, &stdout, "stdout")
	go copyLines(errR, &stderr, "stderr")

	done := make(chan struct{})
	killed := make(chan struct{})
	go func() {
		select {
		case <-done:
			return
		case <-ctx.Done():
		}
		pgid := cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
		close(killed)
	}()
	wg.Wait()
	werr := cmd.Wait()
	close(done)
	if ctx.Err() != nil {
		<-killed
		// Whatever the group left behind goes too: nothing runs orphaned.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return nil, context.Cause(ctx)
	}
	res := &engine.CommandResult{Stdout: stdout.String(), Stderr: stderr.String(), Duration: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case werr == nil:
	case errors.As(werr, &ee):
		res.Code = ee.ExitCode()
		if res.Code < 0 {
			res.Code = 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
		}
	default:
		return nil, werr
	}
	return res, nil
}

func trimNL(s string) string {
	if n := len(s); n > 0 && s[n-1] == '\n' {
		s = s[:n-1]
		if n := len(s); n > 0 && s[n-1] == '\r' {
			s = s[:n-1]
		}
	}
	return s
}
