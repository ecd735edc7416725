package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/drover/drover/internal/job"
)

// Script jobs (SPEC 6) are the jobs of ordinary scripts whose blocks run
// with `drover step`. They have no Starlark: their source records how the
// script was started, so that `drover resume` can run it again from the
// top, and their journal holds one step per block, keyed by the block's
// name.

// ScriptEntry is the entry name of a script job's source. No Starlark
// file can be named so (it does not end in .star), which keeps the two
// kinds of job apart by their source alone.
const ScriptEntry = "(script)"

// Block activities in a script job's journal.
const (
	ActivityBlock = "step"
	ActivityWait  = "wait"
)

// Script is how a script job's script was started: what `drover resume`
// runs again. The environment is not recorded (it may hold secrets): a
// resumed script gets the environment of the drover resume that runs it.
type Script struct {
	Argv []string `json:"argv"`
	Cwd  string   `json:"cwd"`
	Host string   `json:"host"`
}

// ScriptSource is the stored source of a script job.
func ScriptSource(sc *Script) (*job.Source, error) {
	data, err := json.MarshalIndent(sc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("recording the script: %w", err)
	}
	src := &job.Source{Entry: ScriptEntry, Files: map[string]string{ScriptEntry: string(data) + "\n"}}
	src.Seal()
	return src, nil
}

// ScriptOf returns the script of a script job, nil for a workflow job.
func (e *Engine) ScriptOf(ctx context.Context, j *job.Job) (*Script, error) {
	src, err := e.source(ctx, j.Digest)
	if err != nil {
		return nil, fmt.Errorf("job %s: loading its source: %w", j.ID, err)
	}
	return scriptOfSource(src)
}

func scriptOfSource(src *job.Source) (*Script, error) {
	if src.Entry != ScriptEntry {
		return nil, nil
	}
	var sc Script
	if err := json.Unmarshal([]byte(src.Files[ScriptEntry]), &sc); err != nil {
		return nil, fmt.Errorf("reading a script job's source: %w", err)
	}
	return &sc, nil
}

// Proc is a process of this machine, told apart from a later process with
// the same pid by its start time.
type Proc struct {
	PID   int
	Start string // clock ticks since boot (/proc/PID/stat field 22)
}

// ProcOf identifies a live process of this machine.
func ProcOf(pid int) (Proc, error) {
	start := procStart(pid)
	if start == "" {
		return Proc{}, fmt.Errorf("process %d: cannot read /proc/%d/stat (drover step needs Linux's /proc)", pid, pid)
	}
	return Proc{PID: pid, Start: start}, nil
}

// scriptHolderTag ends the lease owner of a job held by its script, so
// that such owners are known without loading the job's source.
const scriptHolderTag = "script"

// Holder is the lease owner naming this process as the holder of its
// script job. It has the shape of an engine's owner (host:pid:start:tag),
// so that ownerAlive tells when the script is gone.
func (p Proc) Holder() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d:%s:%s", host, p.PID, p.Start, scriptHolderTag)
}

// key names the process in store-wide leases: the boot id keeps a pid and
// start time of an earlier boot from matching.
func (p Proc) key() string {
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return p.Holder() + ":" + strings.TrimSpace(string(boot))
}

// ScriptOfProc reads how a process of this machine was started: its argv
// and working directory.
func ScriptOfProc(pid int) (*Script, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, fmt.Errorf("reading the script's command line: %w", err)
	}
	argv := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
	if len(argv) == 0 || argv[0] == "" {
		return nil, fmt.Errorf("process %d has no command line to run again", pid)
	}
	cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
	if err != nil {
		return nil, fmt.Errorf("reading the script's working directory: %w", err)
	}
	host, _ := os.Hostname()
	return &Script{Argv: argv, Cwd: cwd, Host: host}, nil
}

// isScriptHolder reports whether a lease owner is a script (Proc.Holder).
func isScriptHolder(owner string) bool {
	return strings.HasSuffix(owner, ":"+scriptHolderTag)
}

// onThisHost reports whether an owner names a process of this machine.
func onThisHost(owner string) bool {
	host, _ := os.Hostname()
	h, _, ok := strings.Cut(owner, ":")
	return ok && h == host
}

// scriptLease is how long a script holds its job without running a
// block, as seen from other machines: scripts run their own code between
// blocks and renew only when they call drover step. On the script's own
// machine /proc tells at once whether it still runs.
func (e *Engine) scriptLease() time.Duration { return 10 * e.lease }

// Script job errors, matched with errors.Is.
var (
	// ErrNotScript: the job is a workflow's, not a script's.
	ErrNotScript = errors.New("not a script job")
	// ErrScriptWaiting: the job waits at drover step --wait until it is
	// resumed.
	ErrScriptWaiting = errors.New("the job is waiting")
	// ErrScriptEnded: the job completed or was ended otherwise.
	ErrScriptEnded = errors.New("the job has ended")
)

// refusal is an error whose message says it all, of a kind above.
type refusal struct {
	msg  string
	kind error
}

func (r *refusal) Error() string { return r.msg }
func (r *refusal) Unwrap() error { return r.kind }

func refuse(kind error, format string, args ...any) error {
	return &refusal{msg: fmt.Sprintf(format, args...), kind: kind}
}

// ScriptJob is the job a drover step process works in, and whether it
// was just created.
type ScriptJob struct {
	Job     *job.Job
	Script  *Script
	Created bool
}

// OpenScriptJob finds the job of a drover step call. id is $DROVER_JOB;
// when empty, the job is the one of the calling script (parent): created
// on its first block, found again by its later blocks, however many run
// at once. The job returned is running and held by a live process: the
// script, or the drover resume that runs it. A job nobody holds (its
// script died, it failed or was stopped) is taken by parent: running the
// script again with DROVER_JOB set continues the job. A waiting job is
// refused (ErrScriptWaiting: it goes on with drover resume), and so is an
// ended one.
func (e *Engine) OpenScriptJob(ctx context.Context, id string, parent int) (*ScriptJob, error) {
	p, err := ProcOf(parent)
	if err != nil {
		return nil, err
	}
	created := false
	var j *job.Job
	if id == "" {
		if j, created, err = e.scriptJobOf(ctx, p, parent); err != nil {
			return nil, err
		}
	} else if j, err = e.store.Job(ctx, id); err != nil {
		return nil, err
	}
	sc, err := e.ScriptOf(ctx, j)
	if err != nil {
		return nil, err
	}
	if sc == nil {
		return nil, refuse(ErrNotScript, "job %s is not a script's: it runs the workflow %s", j.ID, j.Name)
	}
	if created {
		return &ScriptJob{Job: j, Script: sc, Created: true}, nil
	}
	if j, err = e.holdScriptJob(ctx, j, p); err != nil {
		return nil, err
	}
	return &ScriptJob{Job: j, Script: sc}, nil
}

// scriptJobOf finds or creates the job of the script process p. A
// store-wide lease named after the process maps it to its job: the
// first block to take the lease creates the job, the others (blocks run
// in the background at the same time) find it there.
func (e *Engine) scriptJobOf(ctx context.Context, p Proc, pid int) (*job.Job, bool, error) {
	now := e.now()
	name := "script:" + p.key()
	candidate := NewID(now)
	got, _, err := e.store.Lease(ctx, name, candidate, now.Add(30*24*time.Hour), now)
	if err != nil {
		return nil, false, fmt.Errorf("finding the script's job: %w", err)
	}
	if got != candidate {
		// Another block of the script is creating it: wait for the row.
		deadline := time.Now().Add(10 * time.Second)
		for {
			j, err := e.store.Job(ctx, got)
			if err == nil {
				return j, false, nil
			}
			if !errors.Is(err, job.ErrNotFound) {
				return nil, false, err
			}
			if time.Now().After(deadline) {
				return nil, false, fmt.Errorf("the script's job %s does not exist (removed with drover rm, or its first block died creating it): %w", got, err)
			}
			select {
			case <-ctx.Done():
				return nil, false, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	sc, err := ScriptOfProc(pid)
	if err != nil {
		_ = e.store.ReleaseLease(context.WithoutCancel(ctx), name, candidate)
		return nil, false, err
	}
	src, err := ScriptSource(sc)
	if err != nil {
		return nil, false, err
	}
	input, err := json.Marshal(map[string]any{"argv": sc.Argv, "cwd": sc.Cwd})
	if err != nil {
		return nil, false, err
	}
	path := scriptPath(sc)
	j := &job.Job{
		ID: candidate, Name: filepath.Base(path), Path: path, Digest: src.Digest, Input: input,
		State: job.Running, Persist: job.PersistAlways, OnError: job.OnErrorFail,
		Owner: p.Holder(), LeaseUntil: now.Add(e.scriptLease()), Runs: 1,
		Created: now, Updated: now, Started: now,
	}
	if err := e.store.CreateJobs(ctx, src, j); err != nil {
		_ = e.store.ReleaseLease(context.WithoutCancel(ctx), name, candidate)
		return nil, false, fmt.Errorf("creating the script's job: %w", err)
	}
	return j, true, nil
}

// scriptPath is the script a command line runs: the first argument after
// an interpreter's options, or the program itself.
func scriptPath(sc *Script) string {
	p := sc.Argv[0]
	for _, a := range sc.Argv[1:] {
		if strings.HasPrefix(a, "-") {
			continue
		}
		p = a
		break
	}
	if !filepath.IsAbs(p) && strings.Contains(p, "/") || fileExists(filepath.Join(sc.Cwd, p)) {
		p = filepath.Join(sc.Cwd, p)
	}
	return p
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// holdScriptJob makes sure a live process holds j, taking it for p when
// nobody does.
func (e *Engine) holdScriptJob(ctx context.Context, j *job.Job, p Proc) (*job.Job, error) {
	switch st := e.EffectiveState(j); {
	case st == job.Running:
		return j, nil
	case st == job.Waiting:
		return nil, refuse(ErrScriptWaiting, "job %s is %s", j.ID, j.Reason)
	case st == job.Completed:
		return nil, refuse(ErrScriptEnded, "job %s already completed", j.ID)
	}
	steal := ""
	if j.Owner != "" && !ownerAlive(j.Owner) {
		steal = j.Owner
	}
	states := []job.State{job.Queued, job.Suspended, job.Interrupted, job.Failed, job.Stopped, job.Skipped}
	cj, err := e.store.Claim(ctx, j.ID, p.Holder(), e.now().Add(e.scriptLease()), steal, states)
	if err != nil {
		if errors.Is(err, job.ErrHeld) || errors.Is(err, job.ErrWrongState) {
			// Another block of the script took it first, or it changed
			// meanwhile: look again.
			cur, gerr := e.store.Job(ctx, j.ID)
			if gerr != nil {
				return nil, gerr
			}
			if e.EffectiveState(cur) == job.Running {
				return cur, nil
			}
		}
		return nil, fmt.Errorf("job %s: taking it up for this script: %w", j.ID, err)
	}
	// A new run of the script: what the last one was doing is over.
	empty := ""
	if err := e.store.Apply(ctx, &job.Update{JobID: cj.ID, Owner: cj.Owner, Error: &empty, Reason: &empty}); err != nil {
		return nil, err
	}
	cj.Error, cj.Reason = "", ""
	return cj, nil
}

// EndScript records the end of a script job held by owner: completed
// when the script exited 0, failed otherwise. A job that waits, or that
// another process holds now, is left as it is; the returned job is as
// stored.
func (e *Engine) EndScript(ctx context.Context, j *job.Job, owner string, code int) (*job.Job, error) {
	cur, err := e.store.Job(ctx, j.ID)
	if err != nil {
		return nil, err
	}
	if cur.State != job.Running || cur.Owner != owner {
		return cur, nil
	}
	st := job.Completed
	msg := ""
	if code != 0 {
		st = job.Failed
		msg = fmt.Sprintf("the script exited with status %d", code)
	}
	now := e.now()
	u := &job.Update{JobID: j.ID, Owner: owner, State: &st, Error: &msg, Ended: &now, Release: true, ClearRequest: true}
	if err := e.store.Apply(ctx, u); err != nil {
		return nil, err
	}
	return e.store.Job(ctx, j.ID)
}

// EndScriptOf is drover step --exit CODE: it records the end of the job
// that the calling script (parent) holds, the way drover resume records
// the end of a script it runs. It does nothing when the script holds no
// job: it ran no block, or drover resume runs it and records the end
// itself, or the job waits. It returns the job, nil when there was none.
func (e *Engine) EndScriptOf(ctx context.Context, id string, parent, code int) (*job.Job, error) {
	p, err := ProcOf(parent)
	if err != nil {
		return nil, err
	}
	name := "script:" + p.key()
	if id == "" {
		// Look without creating: a lease that is already expired when
		// taken is one nobody held.
		now := e.now()
		probe := "probe:" + e.owner
		got, _, err := e.store.Lease(ctx, name, probe, now.Add(-time.Second), now)
		if err != nil {
			return nil, err
		}
		if got == probe {
			return nil, e.store.ReleaseLease(ctx, name, probe)
		}
		id = got
	}
	j, err := e.store.Job(ctx, id)
	if errors.Is(err, job.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if j.Owner != p.Holder() {
		return j, nil
	}
	j, err = e.EndScript(ctx, j, p.Holder(), code)
	if err == nil {
		_ = e.store.ReleaseLease(ctx, name, j.ID)
	}
	return j, err
}
