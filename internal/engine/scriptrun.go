package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/drover/drover/internal/job"
)

// ScriptRun says how RunScript runs a script job's script again.
type ScriptRun struct {
	// Env is the script's environment; RunScript adds DROVER_JOB.
	Env            []string
	Stdout, Stderr io.Writer
}

// scriptHold is a script job this engine holds while its script runs: an
// operator's suspend or stop ends the script (its process group), since a
// script has no safe point drover could stop it at. The blocks that ended
// are kept; the one running runs again when the job is resumed.
type scriptHold struct {
	mu     sync.Mutex
	pgid   int
	action job.Action
	reason string
}

func (h *scriptHold) request(a job.Action, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if a == job.ActionNone || h.action == job.ActionStop {
		return
	}
	h.action = a
	if reason != "" {
		h.reason = reason
	}
	if h.pgid > 0 {
		_ = syscall.Kill(-h.pgid, syscall.SIGTERM)
	}
}

// RunScript runs the script of a script job this engine has claimed, from
// the top, with DROVER_JOB naming the job, and records how it ended:
// completed when it exits 0, failed otherwise, unless the script left the
// job waiting (drover step --wait) or an operator suspended or stopped it.
// It returns the job as stored at the end and the script's exit status.
func (e *Engine) RunScript(ctx context.Context, j *job.Job, sc *Script, o ScriptRun) (*job.Job, int, error) {
	h := &scriptHold{}
	e.holdHandle(j.ID, h)
	defer e.release(j.ID)
	e.leased(j.LeaseUntil)

	cmd := exec.Command(sc.Argv[0], sc.Argv[1:]...)
	cmd.Dir = sc.Cwd
	cmd.Env = append(append([]string{}, o.Env...), "DROVER_JOB="+j.ID)
	cmd.Stdout, cmd.Stderr = o.Stdout, o.Stderr
	// Its own process group: an operator's stop ends the script with
	// everything it started, and drover resume's Ctrl-C goes through the
	// job's suspend rather than straight to the script.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	code := 0
	if err := cmd.Start(); err != nil {
		code = 127
		fmt.Fprintf(o.Stderr, "drover: job %s: running its script again: %v\n", j.ID, err)
	} else {
		h.mu.Lock()
		h.pgid = cmd.Process.Pid
		pending := h.action
		h.mu.Unlock()
		if pending != job.ActionNone {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		}
		done := make(chan struct{})
		go func() {
			select {
			case <-ctx.Done():
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			case <-done:
			}
		}()
		err := cmd.Wait()
		close(done)
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					code = 128 + int(ws.Signal())
				}
			} else {
				code = 127
			}
		}
	}
	wctx := context.WithoutCancel(ctx)
	h.mu.Lock()
	action, reason := h.action, h.reason
	h.mu.Unlock()
	if action == job.ActionNone && ctx.Err() != nil {
		action, reason = job.ActionSuspend, "suspended: drover resume was interrupted"
	}
	if action != job.ActionNone {
		if cmd.Process != nil {
			// Let the blocks that were told to end record how they ended
			// before the job stops taking their results.
			drainGroup(cmd.Process.Pid, 5*time.Second)
		}
		cur, err := e.store.Job(wctx, j.ID)
		if err != nil {
			return nil, code, err
		}
		if cur.State != job.Running || cur.Owner != e.owner {
			return cur, code, nil
		}
		st := job.Suspended
		if action == job.ActionStop {
			st = job.Stopped
		}
		if reason == "" {
			reason = string(st) + " by an operator"
		}
		u := &job.Update{JobID: j.ID, Owner: e.owner, State: &st, Reason: &reason, Release: true, ClearRequest: true}
		if st == job.Stopped {
			now := e.now()
			u.Ended = &now
		}
		if err := e.store.Apply(wctx, u); err != nil {
			return nil, code, err
		}
		cur, err = e.store.Job(wctx, j.ID)
		return cur, code, err
	}
	cur, err := e.EndScript(wctx, j, e.owner, code)
	return cur, code, err
}

// ClaimScript claims a script job for drover resume (Claim refuses one
// whose script still runs, even between blocks) and clears what its last
// run left: the error it failed with, where it waited.
func (e *Engine) ClaimScript(ctx context.Context, id string) (*job.Job, error) {
	cj, err := e.Claim(ctx, id, Resumable)
	if err != nil {
		return nil, err
	}
	empty := ""
	if err := e.store.Apply(ctx, &job.Update{JobID: id, Owner: e.owner, Error: &empty, Reason: &empty}); err != nil {
		return nil, err
	}
	cj.Error, cj.Reason = "", ""
	return cj, nil
}

// drainGroup waits for the processes of a group to end, and kills those
// left after wait.
func drainGroup(pgid int, wait time.Duration) {
	deadline := time.Now().Add(wait)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
