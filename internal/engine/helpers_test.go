package engine_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/local"
	"github.com/drover/drover/internal/store/sqlite"
)

// harness is an engine over a real SQLite store in a temporary directory,
// running sh() with the real local executor.
type harness struct {
	t   *testing.T
	dir string // the side-effect directory, @DIR@ in workflows
	st  *sqlite.Store
	eng *engine.Engine
	ctx context.Context
}

func newHarness(t *testing.T, mod ...func(*engine.Options)) *harness {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "drover.db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	h := &harness{t: t, dir: dir, st: st, ctx: ctx}
	h.eng = h.newEngine(mod...)
	return h
}

// newEngine is another engine on the same store.
func (h *harness) newEngine(mod ...func(*engine.Options)) *engine.Engine {
	o := engine.Options{
		Store:      h.st,
		Local:      &local.Executor{Grace: 200 * time.Millisecond},
		Lease:      5 * time.Second,
		Poll:       100 * time.Millisecond,
		ShortSleep: time.Second,
	}
	for _, m := range mod {
		m(&o)
	}
	e := engine.New(o)
	h.t.Cleanup(e.Close)
	return e
}

// expand replaces @DIR@ with the harness directory.
func (h *harness) expand(s string) string { return strings.ReplaceAll(s, "@DIR@", h.dir) }

// source builds a sealed source from main.star (and other files).
func (h *harness) source(main string, others ...string) *job.Source {
	files := map[string]string{"main.star": h.expand(main)}
	for i := 0; i+1 < len(others); i += 2 {
		files[others[i]] = h.expand(others[i+1])
	}
	src := &job.Source{Entry: "main.star", Files: files}
	src.Seal()
	return src
}

// start prepares and creates a job held by h.eng, ready for Execute.
func (h *harness) start(main string, spec engine.Spec) *job.Job {
	h.t.Helper()
	return h.startOn(h.eng, h.source(main), spec)
}

func (h *harness) startOn(e *engine.Engine, src *job.Source, spec engine.Spec) *job.Job {
	h.t.Helper()
	spec.Source = src
	p, err := e.Prepare(h.ctx, spec)
	if err != nil {
		h.t.Fatalf("prepare: %v", err)
	}
	if err := e.Create(h.ctx, p.Source, true, p.Job); err != nil {
		h.t.Fatalf("create: %v", err)
	}
	return p.Job
}

// execute runs a held job once until it stops running.
func (h *harness) execute(j *job.Job) *job.Job {
	h.t.Helper()
	return h.executeOn(h.eng, j)
}

func (h *harness) executeOn(e *engine.Engine, j *job.Job) *job.Job {
	h.t.Helper()
	out, err := e.Execute(h.ctx, j, nil)
	if err != nil {
		h.t.Fatalf("execute %s: %v", j.ID, err)
	}
	if out.LeaseLost {
		h.t.Fatalf("execute %s: lease lost", j.ID)
	}
	return out.Job
}

// run starts a job and executes it once.
func (h *harness) run(main string, spec engine.Spec) *job.Job {
	h.t.Helper()
	return h.execute(h.start(main, spec))
}

// resume claims a job in a resumable state and executes it once.
func (h *harness) resume(id string) *job.Job {
	h.t.Helper()
	j, err := h.eng.Claim(h.ctx, id, engine.Resumable)
	if err != nil {
		h.t.Fatalf("claim %s: %v", id, err)
	}
	return h.execute(j)
}

func (h *harness) job(id string) *job.Job {
	h.t.Helper()
	j, err := h.st.Job(h.ctx, id)
	if err != nil {
		h.t.Fatalf("job %s: %v", id, err)
	}
	return j
}

// journal returns the stored journal by key.
func (h *harness) journal(id string) map[string]job.Step {
	h.t.Helper()
	steps, err := h.st.Journal(h.ctx, id)
	if err != nil {
		h.t.Fatalf("journal %s: %v", id, err)
	}
	m := map[string]job.Step{}
	for _, s := range steps {
		m[s.Key] = s
	}
	return m
}

// doneKeys lists the keys of the stored journal's done steps, sorted.
func (h *harness) doneKeys(id string) []string {
	h.t.Helper()
	var out []string
	for k, s := range h.journal(id) {
		if s.Status == job.StepDone {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// lines reads a side-effect file of the harness directory.
func (h *harness) lines(name string) []string {
	h.t.Helper()
	f, err := os.Open(filepath.Join(h.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// count counts the lines equal to s in a side-effect file.
func (h *harness) count(name, s string) int {
	n := 0
	for _, l := range h.lines(name) {
		if l == s {
			n++
		}
	}
	return n
}

func (h *harness) touch(name string) {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(h.dir, name), nil, 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) exists(name string) bool {
	_, err := os.Stat(filepath.Join(h.dir, name))
	return err == nil
}

// output returns the job's emitted values as JSON texts.
func (h *harness) output(id string) []string {
	h.t.Helper()
	recs, err := h.st.Records(h.ctx, id, job.Output, 0, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, string(r.Value))
	}
	return out
}

// logs returns the job's log lines.
func (h *harness) logs(id string) []string {
	h.t.Helper()
	recs, err := h.st.Records(h.ctx, id, job.Log, 0, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, r.Text)
	}
	return out
}

// eventually polls cond every 5ms until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gate is a sh() command that marks NAME.reached and blocks until the
// test creates NAME.go: the test inspects the store while a step is in
// flight.
func gate(name string) string {
	return `sh("touch @DIR@/` + name + `.reached; while [ ! -e @DIR@/` + name + `.go ]; do sleep 0.01; done")`
}

// execAsync runs Execute in the background.
func (h *harness) execAsync(e *engine.Engine, j *job.Job) <-chan *job.Job {
	ch := make(chan *job.Job, 1)
	go func() {
		out, err := e.Execute(h.ctx, j, nil)
		if err != nil {
			h.t.Errorf("execute %s: %v", j.ID, err)
			ch <- nil
			return
		}
		ch <- out.Job
	}()
	return ch
}

// pass opens a gate and waits for the job to get past it.
func (h *harness) await(name string) {
	h.t.Helper()
	eventually(h.t, 10*time.Second, name+" reached", func() bool { return h.exists(name + ".reached") })
}

func (h *harness) open(name string) { h.touch(name + ".go") }

func wantState(t *testing.T, j *job.Job, s job.State) {
	t.Helper()
	if j == nil {
		t.Fatalf("no job")
	}
	if j.State != s {
		t.Fatalf("job %s is %s, want %s (error: %s; reason: %s)", j.ID, j.State, s, j.Error, j.Reason)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
