package crashtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/proctest"
	"github.com/drover/drover/internal/store/sqlite"
)

// droverBin is the drover binary TestMain builds.
var droverBin string

func TestMain(m *testing.M) {
	os.Exit(proctest.Main(m, &droverBin))
}

// env is one store and one side-effect directory. Workflows write a line
// per executed step to ran.txt (see stepLib) and return the line as the
// step's stdout, so that the journal tells which line a committed step
// wrote.
type env struct {
	t   *testing.T
	dir string
	db  string
	ctx context.Context

	mu    sync.Mutex
	procs []*proc
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	e := &env{t: t, dir: dir, db: filepath.Join(dir, "drover.db"), ctx: ctx}
	t.Cleanup(func() {
		e.mu.Lock()
		procs := e.procs
		e.mu.Unlock()
		for _, p := range procs {
			p.Kill()
		}
		e.killOrphans()
		cancel()
	})
	return e
}

// stepLib is loaded by the workflows: step(label, extra) appends label to
// ran.txt, runs the shell text extra, and returns label as its stdout.
const stepLib = `
def step(label, extra = ""):
    return sh("echo %s >> @DIR@/ran.txt; %s echo %s" % (label, extra, label))
`

// workflow writes a workflow file (with lib.star beside it) and returns
// its path. @DIR@ stands for the side-effect directory.
func (e *env) workflow(name, text string) string {
	e.t.Helper()
	files := map[string]string{
		"lib.star": stepLib,
		name:       "load(\"lib.star\", \"step\")\n" + text,
	}
	for n, body := range files {
		body = strings.ReplaceAll(body, "@DIR@", e.dir)
		if err := os.WriteFile(filepath.Join(e.dir, n), []byte(body), 0o644); err != nil {
			e.t.Fatal(err)
		}
	}
	return filepath.Join(e.dir, name)
}

// proc is a drover child process.
type proc = proctest.Proc

func (e *env) command(args ...string) *exec.Cmd {
	cmd := exec.Command(droverBin, args...)
	cmd.Dir = e.dir
	cmd.Env = append(os.Environ(),
		"DROVER_DB="+e.db,
		"DROVER_LEASE=2s",
		"HOME="+e.dir,
		"XDG_DATA_HOME="+filepath.Join(e.dir, "data"),
		"USER=crashtest",
	)
	return cmd
}

// start starts drover in the background.
func (e *env) start(args ...string) *proc {
	e.t.Helper()
	p := proctest.Start(e.t, e.command(args...), args)
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p
}

// drover runs drover to its end and returns its exit code.
func (e *env) drover(timeout time.Duration, args ...string) (*proc, int) {
	e.t.Helper()
	p := e.start(args...)
	return p, p.Wait(e.t, timeout)
}

// mustDrover runs drover and fails the test unless it exits with want.
func (e *env) mustDrover(want int, timeout time.Duration, args ...string) *proc {
	e.t.Helper()
	p, code := e.drover(timeout, args...)
	if code != want {
		e.t.Fatalf("want exit %d from %s", want, p)
	}
	return p
}

// killOrphans kills what the killed drover processes left running: their
// sh steps run in process groups of their own, so a SIGKILL of drover does
// not reach them. It returns how many it found.
func (e *env) killOrphans() int {
	n := 0
	self := syscall.Getpgrp()
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + ent.Name() + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, []byte(e.dir)) {
			continue
		}
		if bytes.Contains(cmdline, []byte(droverBin)) {
			continue // a drover of ours still running: killed by its proc
		}
		pgid, err := syscall.Getpgid(pid)
		if err == nil && pgid != self && pgid > 1 {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		} else {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		n++
	}
	return n
}

// ran counts the lines of ran.txt.
func (e *env) ran() map[string]int {
	e.t.Helper()
	m := map[string]int{}
	for _, l := range e.ranLines() {
		m[l]++
	}
	return m
}

func (e *env) ranLines() []string {
	f, err := os.Open(filepath.Join(e.dir, "ran.txt"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func (e *env) exists(name string) bool {
	_, err := os.Stat(filepath.Join(e.dir, name))
	return err == nil
}

func (e *env) touch(name string) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, name), nil, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// eventually polls cond until it holds, failing the test after timeout.
func (e *env) eventually(timeout time.Duration, what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// snapshot is what the store holds, read with the store package while no
// drover process writes to it.
type snapshot struct {
	jobs    map[string]*job.Job
	journal map[string][]job.Step
}

func (e *env) snapshot() *snapshot {
	e.t.Helper()
	st, err := sqlite.Open(e.ctx, e.db)
	if err != nil {
		e.t.Fatalf("open store: %v", err)
	}
	defer st.Close()
	list, err := st.Jobs(e.ctx, job.Filter{}, time.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	s := &snapshot{jobs: map[string]*job.Job{}, journal: map[string][]job.Step{}}
	for _, j := range list {
		s.jobs[j.ID] = j
		steps, err := st.Journal(e.ctx, j.ID)
		if err != nil {
			e.t.Fatal(err)
		}
		s.journal[j.ID] = steps
	}
	return s
}

// peek reads the store while drover processes may be writing to it.
func (e *env) peek(fn func(st *sqlite.Store)) {
	e.t.Helper()
	if _, err := os.Stat(e.db); err != nil {
		return
	}
	st, err := sqlite.OpenOptions(e.ctx, e.db, sqlite.Options{ReadOnly: true})
	if err != nil {
		return // not created yet, or its schema not yet written
	}
	defer st.Close()
	fn(st)
}

// onlyJob returns the single job of the snapshot.
func (s *snapshot) onlyJob(t *testing.T) *job.Job {
	t.Helper()
	if len(s.jobs) != 1 {
		t.Fatalf("the store holds %d jobs, want 1", len(s.jobs))
	}
	for _, j := range s.jobs {
		return j
	}
	return nil
}

// committed lists the labels of the done sh steps of the journal: the
// side effects that must never happen again.
func (s *snapshot) committed(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{} // label -> job/key
	for id, steps := range s.journal {
		for _, st := range steps {
			if st.Status != job.StepDone || st.Activity != "sh" {
				continue
			}
			var res struct {
				Stdout string `json:"stdout"`
			}
			if err := json.Unmarshal(st.Result, &res); err != nil {
				t.Fatalf("job %s step %s: result %s: %v", id, st.Key, st.Result, err)
			}
			label := strings.TrimSpace(res.Stdout)
			if label == "" {
				continue
			}
			out[label] = id + "/" + st.Key
		}
	}
	return out
}

// doneKeys lists a job's done step keys, sorted.
func (s *snapshot) doneKeys(id string) []string {
	var out []string
	for _, st := range s.journal[id] {
		if st.Status == job.StepDone {
			out = append(out, st.Key)
		}
	}
	sort.Strings(out)
	return out
}

// commit is a step the journal held committed at a kill, and how many
// times its line was in ran.txt then.
type commit struct {
	where string // job/key
	count int
}

// freeze records, for every committed label, how often it has run so far.
// A step can have run more than once before it was committed (it was in
// flight at an earlier kill); once committed, it must not run again.
func (e *env) freeze(committed map[string]string, into map[string]commit) map[string]commit {
	e.t.Helper()
	if into == nil {
		into = map[string]commit{}
	}
	counts := e.ran()
	for label, where := range committed {
		if _, ok := into[label]; ok {
			continue
		}
		into[label] = commit{where, counts[label]}
	}
	return into
}

// checkNotAgain fails the test for every committed step that ran again
// after it was committed.
func (e *env) checkNotAgain(frozen map[string]commit) {
	e.t.Helper()
	counts := e.ran()
	bad := 0
	for label, c := range frozen {
		if c.count == 0 {
			bad++
			e.t.Errorf("step %s (%s) is committed but its side effect never happened", c.where, label)
			continue
		}
		if n := counts[label]; n != c.count {
			bad++
			if bad <= 10 {
				e.t.Errorf("step %s (%s) ran again after it was committed: %d times before, %d now", c.where, label, c.count, n)
			}
		}
	}
	if bad > 10 {
		e.t.Errorf("... %d committed steps ran again in all", bad)
	}
}

// checkOnce fails the test for every committed label that ran.txt does
// not hold exactly once: for steps committed in a job's first run.
func (e *env) checkOnce(committed map[string]string) {
	e.t.Helper()
	counts := e.ran()
	bad := 0
	for label, where := range committed {
		if n := counts[label]; n != 1 {
			bad++
			if bad <= 10 {
				e.t.Errorf("step %s (%s) was committed before the kill but ran %d times", where, label, n)
			}
		}
	}
	if bad > 10 {
		e.t.Errorf("... %d committed steps ran again in all", bad)
	}
}

// checkAll fails the test unless every label ran at least once.
func (e *env) checkAll(labels []string) {
	e.t.Helper()
	counts := e.ran()
	for _, l := range labels {
		if counts[l] == 0 {
			e.t.Errorf("step %s never ran", l)
		}
	}
}

// jobsJSON is drover jobs --json: the states users see.
func (e *env) jobsJSON() []map[string]any {
	e.t.Helper()
	p, code := e.drover(20*time.Second, "jobs", "--json", "--all")
	if code != 0 {
		e.t.Fatalf("drover jobs: %s", p)
	}
	var out []map[string]any
	if err := json.Unmarshal(p.Stdout.Bytes(), &out); err != nil {
		e.t.Fatalf("drover jobs --json: %v\n%s", err, p.Stdout.String())
	}
	return out
}

func labels(prefix string, from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("%s%d", prefix, i))
	}
	return out
}

func readFile(e *env, name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(e.dir, name))
}

// removeGlob removes the entries of the side-effect directory whose names
// start with prefix (what killed steps left behind).
func removeGlob(e *env, prefix string) error {
	ents, err := os.ReadDir(e.dir)
	if err != nil {
		return err
	}
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), prefix) {
			if err := os.RemoveAll(filepath.Join(e.dir, ent.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

const (
	syscallSIGSTOP = syscall.SIGSTOP
	syscallSIGCONT = syscall.SIGCONT
)
