package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/drover/drover/internal/job"
)

// BlockResult is what a block's step records: the command's output and
// exit status.
type BlockResult struct {
	Argv       []string `json:"argv"`
	Stdout     string   `json:"stdout"`
	Stderr     string   `json:"stderr"`
	Code       int      `json:"code"`
	Host       string   `json:"host"`
	DurationMS int64    `json:"duration_ms"`
	// Truncated: the output went beyond maxBlockOutput; the terminal saw
	// it all, the journal keeps its beginning.
	Truncated bool `json:"truncated,omitempty"`
}

// blockData is a block step's Data: the run of the job that journaled it.
// A failed block replays within that run and runs again in a later one
// (after drover resume), as a failed step of a workflow does.
type blockData struct {
	Run int `json:"run"`
}

// maxBlockOutput bounds each stream a block's step keeps.
const maxBlockOutput = 4 << 20

// Block is one drover step NAME -- COMMAND call.
type Block struct {
	Name   string
	Argv   []string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Signals received by drover are passed on to the command.
	Signals <-chan os.Signal
	// Notice gets drover's own remarks (a replayed block whose command
	// changed); nil: none.
	Notice func(string)
}

// Outcome of RunBlock.
type BlockOutcome struct {
	Code     int
	Replayed bool
}

// RunBlock runs a block of a script job once: the first call runs the
// command, streaming its output and keeping it in the journal; every
// later call of the same run (and every call once it succeeded) prints
// the kept output instead and returns the kept status. Two calls at once
// do not both run it: the block's lease (a store-wide named lease) lets
// one run it and the other wait to replay its result.
func (e *Engine) RunBlock(ctx context.Context, sj *ScriptJob, b Block) (BlockOutcome, error) {
	holder := e.owner
	lease := "block:" + sj.Job.ID + ":" + b.Name
	for {
		j, steps, err := e.scriptState(ctx, sj.Job.ID)
		if err != nil {
			return BlockOutcome{}, err
		}
		if rec := steps[b.Name]; rec != nil {
			if out, ok, err := replayBlock(j, rec, b); ok || err != nil {
				return out, err
			}
		}
		now := e.now()
		got, _, err := e.store.Lease(ctx, lease, holder, now.Add(e.lease), now)
		if err != nil {
			return BlockOutcome{}, fmt.Errorf("block %s: %w", b.Name, err)
		}
		if got != holder {
			// Another process runs the block. When it died (on this machine
			// that is known at once) its lease is given up for it.
			if !ownerAlive(got) {
				_ = e.store.ReleaseLease(ctx, lease, got)
				continue
			}
			select {
			case <-ctx.Done():
				return BlockOutcome{}, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		out, err := e.runBlockHeld(ctx, sj, b, lease)
		_ = e.store.ReleaseLease(context.WithoutCancel(ctx), lease, holder)
		if errors.Is(err, errBlockAgain) {
			continue
		}
		return out, err
	}
}

// errBlockAgain: another process committed the block meanwhile.
var errBlockAgain = errors.New("block committed meanwhile")

// scriptState reads a script job and its journal by key, refusing a job
// that no longer runs.
func (e *Engine) scriptState(ctx context.Context, id string) (*job.Job, map[string]*job.Step, error) {
	j, err := e.store.Job(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	switch st := e.EffectiveState(j); st {
	case job.Running:
	case job.Waiting:
		return nil, nil, refuse(ErrScriptWaiting, "job %s is %s", j.ID, j.Reason)
	default:
		return nil, nil, refuse(ErrScriptEnded, "job %s is %s", j.ID, st)
	}
	list, err := e.store.Journal(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	steps := make(map[string]*job.Step, len(list))
	for i := range list {
		steps[list[i].Key] = &list[i]
	}
	return j, steps, nil
}

// replayBlock prints a journaled block's output; ok is false when the
// block runs (again) instead.
func replayBlock(j *job.Job, rec *job.Step, b Block) (BlockOutcome, bool, error) {
	if rec.Activity != ActivityBlock {
		return BlockOutcome{}, false, fmt.Errorf("%s in job %s is a drover step --wait, not a block; give the block another name", b.Name, j.ID)
	}
	switch rec.Status {
	case job.StepDone:
	case job.StepFailed:
		var d blockData
		_ = json.Unmarshal(rec.Data, &d)
		if d.Run != j.Runs {
			return BlockOutcome{}, false, nil
		}
	default:
		// Pending: its process died before it ended; it runs again.
		return BlockOutcome{}, false, nil
	}
	var res BlockResult
	if err := json.Unmarshal(rec.Result, &res); err != nil {
		return BlockOutcome{}, false, fmt.Errorf("block %s: reading its recorded result: %w", b.Name, err)
	}
	if b.Notice != nil && rec.Digest != digestOf(ActivityBlock, b.Argv) {
		b.Notice(fmt.Sprintf("block %s replayed; its command changed since it ran (it ran: %s)", b.Name, strings.Join(res.Argv, " ")))
	}
	if _, err := io.WriteString(b.Stdout, res.Stdout); err != nil {
		return BlockOutcome{}, true, err
	}
	if _, err := io.WriteString(b.Stderr, res.Stderr); err != nil {
		return BlockOutcome{}, true, err
	}
	return BlockOutcome{Code: res.Code, Replayed: true}, true, nil
}

// runBlockHeld runs a block whose lease this process holds.
func (e *Engine) runBlockHeld(ctx context.Context, sj *ScriptJob, b Block, lease string) (BlockOutcome, error) {
	j, steps, err := e.scriptState(ctx, sj.Job.ID)
	if err != nil {
		return BlockOutcome{}, err
	}
	if rec := steps[b.Name]; rec != nil {
		if _, again, err := replayBlock(j, rec, Block{Name: b.Name, Stdout: io.Discard, Stderr: io.Discard}); again || err != nil {
			if err != nil {
				return BlockOutcome{}, err
			}
			return BlockOutcome{}, errBlockAgain
		}
	}
	host, _ := os.Hostname()
	start := e.now()
	st := job.Step{Key: b.Name, Activity: ActivityBlock, Digest: digestOf(ActivityBlock, b.Argv), Status: job.StepPending,
		Host: host, Engine: e.owner, Started: start, Attempts: 1}
	if rec := steps[b.Name]; rec != nil {
		st.Attempts = rec.Attempts + 1
	}
	if err := e.applyScript(ctx, j.ID, &job.Update{Steps: []job.Step{st}}); err != nil {
		return BlockOutcome{}, err
	}

	var outBuf, errBuf capped
	cmd := exec.Command(b.Argv[0], b.Argv[1:]...)
	cmd.Stdin = b.Stdin
	cmd.Stdout = io.MultiWriter(b.Stdout, &outBuf)
	cmd.Stderr = io.MultiWriter(b.Stderr, &errBuf)
	stopRenew := e.renewBlock(lease, j)
	runErr := cmd.Start()
	if runErr == nil {
		done := make(chan struct{})
		go func() {
			for {
				select {
				case <-done:
					return
				case sig := <-b.Signals:
					_ = cmd.Process.Signal(sig)
				}
			}
		}()
		runErr = cmd.Wait()
		close(done)
	}
	stopRenew()
	end := e.now()
	code := 0
	if runErr != nil {
		var ee *exec.ExitError
		if !errors.As(runErr, &ee) {
			// The command never started: that is its result too (127, as a
			// shell says for a command not found).
			code = 127
			fmt.Fprintf(io.MultiWriter(b.Stderr, &errBuf), "drover: block %s: %v\n", b.Name, runErr)
		} else if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		} else {
			code = ee.ExitCode()
		}
	}
	res := BlockResult{Argv: b.Argv, Stdout: outBuf.String(), Stderr: errBuf.String(), Code: code, Host: host,
		DurationMS: end.Sub(start).Milliseconds(), Truncated: outBuf.over || errBuf.over}
	data, err := json.Marshal(res)
	if err != nil {
		return BlockOutcome{}, err
	}
	st.Result, st.Ended = data, end
	if code == 0 {
		st.Status = job.StepDone
	} else {
		st.Status = job.StepFailed
		st.Error = fmt.Sprintf("exit status %d", code)
		st.Data, _ = json.Marshal(blockData{Run: j.Runs})
	}
	recs := blockRecords(j, b.Name, host, end, res)
	if err := e.applyScript(context.WithoutCancel(ctx), j.ID, &job.Update{Steps: []job.Step{st}, Records: recs}); err != nil {
		return BlockOutcome{Code: code}, fmt.Errorf("block %s ran (status %d) but its result could not be recorded: %w", b.Name, code, err)
	}
	return BlockOutcome{Code: code}, nil
}

// blockRecords are the log lines of a block's output, for drover logs.
// Their keys carry the run, so that a block run again logs again.
func blockRecords(j *job.Job, name, host string, at time.Time, res BlockResult) []job.Record {
	var recs []job.Record
	add := func(stream, text string) {
		text = strings.TrimSuffix(text, "\n")
		if text == "" {
			return
		}
		for i, line := range strings.Split(text, "\n") {
			recs = append(recs, job.Record{JobID: j.ID, Stream: job.Log, Key: fmt.Sprintf("%s#%d.%s%d", name, j.Runs, stream, i+1),
				Time: at, Host: host, Text: line})
		}
	}
	add("out", res.Stdout)
	add("err", res.Stderr)
	return recs
}

// applyScript commits an update of a script job as whoever holds it now:
// the script's blocks write on behalf of the script, or of the drover
// resume that runs it. The job must still be running.
func (e *Engine) applyScript(ctx context.Context, id string, u *job.Update) error {
	for attempt := 0; ; attempt++ {
		j, err := e.store.Job(ctx, id)
		if err != nil {
			return err
		}
		if j.State != job.Running || j.Owner == "" {
			return refuse(ErrScriptEnded, "job %s is %s", id, e.EffectiveState(j))
		}
		u.JobID, u.Owner = id, j.Owner
		err = e.store.Apply(ctx, u)
		if err == nil || !errors.Is(err, job.ErrLeaseLost) || attempt >= 2 {
			return err
		}
	}
}

// renewBlock keeps the block's lease while its command runs, and the job
// held by its script for other machines' sake.
func (e *Engine) renewBlock(lease string, j *job.Job) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(e.poll)
		defer t.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), e.lease/2)
			now := e.now()
			if _, _, err := e.store.Lease(ctx, lease, e.owner, now.Add(e.lease), now); err != nil {
				e.log.Warn("renewing a block's lease", "err", err)
			}
			if isScriptHolder(j.Owner) {
				if _, err := e.store.Renew(ctx, j.Owner, now.Add(e.scriptLease())); err != nil {
					e.log.Warn("renewing the script's hold on its job", "job", j.ID, "err", err)
				}
			}
			cancel()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

// capped keeps the first maxBlockOutput bytes written to it.
type capped struct {
	buf  bytes.Buffer
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := maxBlockOutput - c.buf.Len(); room < len(p) {
		c.over = true
		if room > 0 {
			c.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return c.buf.Write(p)
}

func (c *capped) String() string { return c.buf.String() }

// WaitBlock is drover step --wait NAME. The first time a run of the job
// reaches it, the job becomes waiting and passed is false: the script is
// to stop (drover step exits 3). Once the job has been resumed, the
// script is run again from the top and the wait passes.
func (e *Engine) WaitBlock(ctx context.Context, sj *ScriptJob, name string) (passed bool, err error) {
	j, steps, err := e.scriptState(ctx, sj.Job.ID)
	if err != nil {
		return false, err
	}
	now := e.now()
	host, _ := os.Hostname()
	rec := steps[name]
	if rec != nil {
		if rec.Activity != ActivityWait {
			return false, fmt.Errorf("%s in job %s is a block, not a drover step --wait; give the wait another name", name, j.ID)
		}
		if rec.Status == job.StepDone {
			return true, nil
		}
		var d blockData
		_ = json.Unmarshal(rec.Data, &d)
		if d.Run < j.Runs {
			// The job was taken up again since it stopped here: that is
			// what the wait was for.
			res, _ := json.Marshal(map[string]any{"resumed_at": now.UTC().Format(time.RFC3339), "run": j.Runs})
			st := *rec
			st.Status, st.Result, st.Ended, st.Data = job.StepDone, res, now, nil
			if err := e.applyScript(ctx, j.ID, &job.Update{Steps: []job.Step{st}}); err != nil {
				return false, err
			}
			return true, nil
		}
	}
	data, _ := json.Marshal(blockData{Run: j.Runs})
	st := job.Step{Key: name, Activity: ActivityWait, Digest: digestOf(ActivityWait, name), Status: job.StepPending,
		Data: data, Host: host, Engine: e.owner, Started: now, Attempts: 1}
	if rec != nil {
		st.Started = rec.Started
	}
	state := job.Waiting
	reason := "waiting at " + name + "; continue it with: drover resume " + j.ID
	empty := []string{}
	zero := time.Time{}
	u := &job.Update{Steps: []job.Step{st}, State: &state, Reason: &reason, WaitFor: &empty, WakeAt: &zero,
		Release: true, ClearRequest: true}
	if err := e.applyScript(ctx, j.ID, u); err != nil {
		return false, err
	}
	return false, nil
}
