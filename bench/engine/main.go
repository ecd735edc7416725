// Command engine is the whole-process harness of drover's engine
// benchmarks B1-B5 (docs/benchmarks.md, "Engine (B1-B5)").
//
//	go run ./bench/engine                # all of B1-B5
//	go run ./bench/engine -only B1,B4    # some of them
//
// B1, B3 and B5 run the drover binary as a user would (it is built from
// ./cmd/drover unless -drover names one); B2 and B4 use the engine library
// in a fresh child process of this harness each, so that one benchmark's
// heap does not weigh on the next. Every loop is bounded in count and
// time. Figures go to stdout, one line each.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/local"
	"github.com/drover/drover/internal/store/sqlite"
)

var (
	onlyFlag   = flag.String("only", "B1,B2,B3,B4,B5", "comma-separated benchmarks to run")
	droverFlag = flag.String("drover", "", "drover binary to run (default: build ./cmd/drover)")
	dirFlag    = flag.String("dir", "", "directory for stores and files (default: a new temporary directory, removed at the end)")
	repsFlag   = flag.Int("reps", 5, "repetitions of B1 and B3 (B2: 3)")
	childFlag  = flag.String("child", "", "internal: run one in-process benchmark in this process")
	argFlag    = flag.String("arg", "", "internal: the child's argument")

	b1Steps   = flag.Int("b1-steps", 1000, "B1: steps in the job")
	b2Jobs    = flag.Int("b2-jobs", 10000, "B2: jobs")
	b2Conc    = flag.Int("b2-concurrency", 64, "B2: jobs at a time")
	b3Items   = flag.Int("b3-items", 10000, "B3: foreach_parallel items")
	b4Jobs    = flag.Int("b4-jobs", 100000, "B4: waiting jobs")
	b4Signals = flag.Int("b4-signals", 1000, "B4: signals sent")
	b5Jobs    = flag.Int("b5-jobs", 1000, "B5: jobs")
)

func main() {
	flag.Parse()
	if *childFlag != "" {
		if err := child(*childFlag, *argFlag); err != nil {
			fmt.Fprintln(os.Stderr, "bench/engine child:", err)
			os.Exit(1)
		}
		return
	}
	if err := parent(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/engine:", err)
		os.Exit(1)
	}
}

func parent() error {
	dir := *dirFlag
	if dir == "" {
		d, err := os.MkdirTemp("", "drover-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	bin := *droverFlag
	if bin == "" {
		bin = filepath.Join(dir, "drover")
		t := time.Now()
		build := exec.Command("go", "build", "-o", bin, "./cmd/drover")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("building drover (run from the module root): %v\n%s", err, out)
		}
		fmt.Printf("built %s in %s\n", bin, time.Since(t).Round(time.Millisecond))
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	machine()
	only := map[string]bool{}
	for _, b := range strings.Split(*onlyFlag, ",") {
		only[strings.ToUpper(strings.TrimSpace(b))] = true
	}
	h := &harness{dir: dir, bin: bin, self: self}
	for _, b := range []struct {
		name string
		fn   func() error
	}{{"B1", h.b1}, {"B2", h.b2}, {"B3", h.b3}, {"B4", h.b4}, {"B5", h.b5}} {
		if !only[b.name] {
			continue
		}
		fmt.Printf("\n== %s  (load %s)\n", b.name, loadavg())
		if err := b.fn(); err != nil {
			fmt.Printf("%s: ERROR: %v\n", b.name, err)
		}
	}
	fmt.Printf("\nend (load %s)\n", loadavg())
	return nil
}

type harness struct {
	dir, bin, self string
}

func machine() {
	cpu := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, cpu, _ = strings.Cut(l, ":")
				cpu = strings.TrimSpace(cpu)
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		l, _, _ := strings.Cut(string(b), "\n")
		mem = strings.Join(strings.Fields(l)[1:], " ")
	}
	fmt.Printf("machine: %d CPUs (%s), MemTotal %s, %s %s/%s\n", runtime.NumCPU(), cpu, mem, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// drover runs the drover binary on store db and waits, at most limit.
type runResult struct {
	wall   time.Duration
	maxRSS int64 // KiB, from wait4's rusage: an upper bound (see hwm)
	// hwm is the child's VmHWM, polled every 5 ms while it runs: a lower
	// bound of its peak. Go starts children with vfork, and exec records
	// the parent's high-water mark as the child's, so the rusage figure
	// is never below this harness's own peak RSS.
	hwm    int64 // KiB
	code   int
	stderr string
}

func (h *harness) drover(db string, limit time.Duration, args ...string) (runResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.bin, args...)
	cmd.Dir = h.dir
	cmd.Env = append(os.Environ(), "DROVER_DB="+db)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t := time.Now()
	if err := cmd.Start(); err != nil {
		return runResult{}, err
	}
	var hwm atomic.Int64
	stopPoll := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
		for {
			if kib := statusKiB(status, "VmHWM:"); kib > hwm.Load() {
				hwm.Store(kib)
			}
			select {
			case <-stopPoll:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	err := cmd.Wait()
	res := runResult{wall: time.Since(t), stderr: stderr.String()}
	close(stopPoll)
	<-polled
	res.hwm = hwm.Load()
	if cmd.ProcessState != nil {
		res.code = cmd.ProcessState.ExitCode()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			res.maxRSS = ru.Maxrss
		}
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("drover %s: no end within %s", strings.Join(args, " "), limit)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return res, err
	}
	return res, nil
}

// statusKiB reads one "Name: N kB" field of a /proc status file; 0 if
// the file or the field is missing.
func statusKiB(path, field string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

func (h *harness) write(name, text string) string {
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		panic(err)
	}
	return p
}

// fsyncRef is the reference of B1: write 4 KiB and fdatasync it, n times,
// in dir. append grows the file each time (the size goes to the file
// system journal too); otherwise the same block is rewritten.
func fsyncRef(dir string, n int, appendMode bool) (time.Duration, error) {
	f, err := os.CreateTemp(dir, "fsync-ref-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	if _, err := f.WriteAt(buf, 0); err != nil {
		return 0, err
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		return 0, err
	}
	t := time.Now()
	for i := range n {
		off := int64(0)
		if appendMode {
			off = int64(i+1) * 4096
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			return 0, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return 0, err
		}
	}
	return time.Since(t) / time.Duration(n), nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }

// b1: drover run of n now() steps under --persist always, against the
// same workflow with 0 steps; the difference over n is one durable step.
func (h *harness) b1() error {
	n := *b1Steps
	dir := filepath.Join(h.dir, "b1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	db := filepath.Join(dir, "drover.db")
	wf := h.write("b1.star", "def main(n):\n    for i in range(n):\n        now()\n")
	run := func(steps int) (time.Duration, error) {
		r, err := h.drover(db, 2*time.Minute, "run", wf, "--persist", "always", "-p", "n="+strconv.Itoa(steps))
		if err != nil {
			return 0, err
		}
		if r.code != 0 {
			return 0, fmt.Errorf("drover run exited %d: %s", r.code, r.stderr)
		}
		return r.wall, nil
	}
	// A store in use: created, its WAL grown.
	if _, err := run(n); err != nil {
		return err
	}
	// Each repetition measures the reference right before and right after
	// the two runs, so that both sides see the same disk and load.
	var steps, apps, owrs []time.Duration
	var ratios []float64
	for i := range *repsFlag {
		app1, err := fsyncRef(dir, n, true)
		if err != nil {
			return err
		}
		owr, err := fsyncRef(dir, n, false)
		if err != nil {
			return err
		}
		z, err := run(0)
		if err != nil {
			return err
		}
		f, err := run(n)
		if err != nil {
			return err
		}
		app2, err := fsyncRef(dir, n, true)
		if err != nil {
			return err
		}
		app := (app1 + app2) / 2
		step := (f - z) / time.Duration(n)
		ratio := float64(step) / float64(app)
		fmt.Printf("B1 rep %d: run 0 steps %s, run %d steps %s -> %s/step; fdatasync 4 KiB append %s (before %s, after %s), overwrite %s; ratio %.2f (load %s)\n",
			i+1, z.Round(time.Millisecond), n, f.Round(time.Millisecond), us(step), us(app), us(app1), us(app2), us(owr), ratio, loadavg())
		steps, apps, owrs, ratios = append(steps, step), append(apps, app), append(owrs, owr), append(ratios, ratio)
	}
	if err := checkSteps(db, n); err != nil {
		return err
	}
	slices.Sort(ratios)
	mr := ratios[len(ratios)/2]
	fmt.Printf("B1 median: %s per durable step; fdatasync reference (4 KiB append) %s, overwrite %s; median ratio %.2f (min %.2f, max %.2f) (goal <= 1.5): %s\n",
		us(median(steps)), us(median(apps)), us(median(owrs)), mr, ratios[0], ratios[len(ratios)-1], verdict(mr <= 1.5))
	return nil
}

// checkSteps checks that the newest job of the store completed with n
// journaled steps.
func checkSteps(db string, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := sqlite.Open(ctx, db)
	if err != nil {
		return err
	}
	defer st.Close()
	jobs, err := st.Jobs(ctx, job.Filter{}, time.Now())
	if err != nil {
		return err
	}
	if len(jobs) == 0 {
		return errors.New("no job in the store")
	}
	j := jobs[len(jobs)-1]
	if j.State != job.Completed || j.Steps != n {
		return fmt.Errorf("job %s is %s with %d steps, want completed with %d", j.ID, j.State, j.Steps, n)
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "MET"
	}
	return "NOT MET"
}

// b3: drover run of one foreach_parallel over n items, one now() each.
func (h *harness) b3() error {
	dir := filepath.Join(h.dir, "b3")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	db := filepath.Join(dir, "drover.db")
	wf := h.write("b3.star", "def one(i):\n    return now()\n\ndef main(n):\n    return len(foreach_parallel(range(n), one))\n")
	var walls []time.Duration
	var rss []int64
	for i := range *repsFlag {
		r, err := h.drover(db, 2*time.Minute, "run", wf, "-p", "n="+strconv.Itoa(*b3Items))
		if err != nil {
			return err
		}
		if r.code != 0 {
			return fmt.Errorf("drover run exited %d: %s", r.code, r.stderr)
		}
		fmt.Printf("B3 rep %d: wall %s, peak RSS %.1f MiB (polled VmHWM; rusage maxrss %.1f MiB, this harness's own VmHWM %.1f MiB) (load %s)\n",
			i+1, r.wall.Round(time.Millisecond), float64(r.hwm)/1024, float64(r.maxRSS)/1024, float64(statusKiB("/proc/self/status", "VmHWM:"))/1024, loadavg())
		walls, rss = append(walls, r.wall), append(rss, max(r.hwm, r.maxRSS))
	}
	if err := checkSteps(db, *b3Items); err != nil {
		return err
	}
	mw := median(walls)
	slices.Sort(rss)
	mr := float64(rss[len(rss)/2]) / 1024
	fmt.Printf("B3 median: wall %s (goal < 2 s): %s; peak RSS (the larger of polled VmHWM and rusage) %.1f MiB, max %.1f MiB (goal < 200 MiB): %s\n",
		mw.Round(time.Millisecond), verdict(mw < 2*time.Second), mr, float64(rss[len(rss)-1])/1024, verdict(mr < 200))
	return nil
}

// childRun runs this harness as a child for one in-process benchmark and
// passes its output through.
func (h *harness) childRun(name, arg string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	args := []string{"-child", name, "-arg", arg,
		"-b2-jobs", strconv.Itoa(*b2Jobs), "-b2-concurrency", strconv.Itoa(*b2Conc),
		"-b4-jobs", strconv.Itoa(*b4Jobs), "-b4-signals", strconv.Itoa(*b4Signals), "-b5-jobs", strconv.Itoa(*b5Jobs)}
	cmd := exec.CommandContext(ctx, h.self, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return fmt.Errorf("%s: no end within %s", name, limit)
	}
	return err
}

func (h *harness) b2() error {
	reps := min(*repsFlag, 3)
	for i := range reps {
		dir := filepath.Join(h.dir, "b2-"+strconv.Itoa(i))
		if err := h.childRun("B2", dir, 5*time.Minute); err != nil {
			return err
		}
	}
	return nil
}

func (h *harness) b4() error {
	dir := filepath.Join(h.dir, "b4")
	if err := h.childRun("B4-setup", dir, 20*time.Minute); err != nil {
		return err
	}
	return h.childRun("B4", dir, 10*time.Minute)
}

// child runs one in-process benchmark.
func child(name, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	switch name {
	case "B2":
		return childB2(dir)
	case "B4-setup":
		return childB4Setup(dir)
	case "B4":
		return childB4(dir)
	case "B5-create":
		return childB5Create(dir)
	}
	return fmt.Errorf("unknown child %q", name)
}

// open is a store and an engine as drover run sets them up.
func open(ctx context.Context, dir string) (*sqlite.Store, *engine.Engine, error) {
	st, err := sqlite.Open(ctx, filepath.Join(dir, "drover.db"))
	if err != nil {
		return nil, nil, err
	}
	e := engine.New(engine.Options{Store: st, Local: &local.Executor{}})
	return st, e, nil
}

func source(main string) *job.Source {
	src := &job.Source{Entry: "main.star", Files: map[string]string{"main.star": main}}
	src.Seal()
	return src
}

// childB2: n one-step jobs, conc at a time: Prepare, Create (claimed),
// Drive, as drover run does for each.
func childB2(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st, e, err := open(ctx, dir)
	if err != nil {
		return err
	}
	defer st.Close()
	defer e.Close()
	src := source("def main():\n    now()\n")
	n := *b2Jobs
	var next, done atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	load := loadavg()
	t := time.Now()
	for range *b2Conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				err := func() error {
					p, err := e.Prepare(ctx, engine.Spec{Source: src})
					if err != nil {
						return err
					}
					if err := e.Create(ctx, p.Source, true, p.Job); err != nil {
						return err
					}
					j, err := e.Drive(ctx, p.Job, nil, nil)
					if err != nil {
						return err
					}
					if j.State != job.Completed {
						return fmt.Errorf("job %s is %s: %s", j.ID, j.State, j.Error)
					}
					return nil
				}()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(t)
	if firstErr != nil {
		return firstErr
	}
	rate := float64(done.Load()) / wall.Seconds()
	fmt.Printf("B2: %d one-step jobs, %d at a time: %s, %.0f jobs/s (goal >= 3,000): %s (load %s, after %s)\n",
		done.Load(), *b2Conc, wall.Round(time.Millisecond), rate, verdict(rate >= 3000), load, loadavg())
	return nil
}

const b4Workflow = "def main():\n    v = wait(\"go\")\n    now()\n    return v\n"

// childB4Setup brings n jobs to their wait(): each is created and run
// until it unloads, 64 at a time.
func childB4Setup(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 19*time.Minute)
	defer cancel()
	st, e, err := open(ctx, dir)
	if err != nil {
		return err
	}
	defer st.Close()
	defer e.Close()
	src := source(b4Workflow)
	n := *b4Jobs
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	t := time.Now()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				err := func() error {
					p, err := e.Prepare(ctx, engine.Spec{Source: src})
					if err != nil {
						return err
					}
					if err := e.Create(ctx, p.Source, true, p.Job); err != nil {
						return err
					}
					j, err := e.Drive(ctx, p.Job, nil, nil)
					if err != nil {
						return err
					}
					if j.State != job.Waiting {
						return fmt.Errorf("job %s is %s, not waiting: %s", j.ID, j.State, j.Error)
					}
					return nil
				}()
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if ctx.Err() != nil {
		return fmt.Errorf("B4 setup: not done within its time")
	}
	fmt.Printf("B4 setup: %d jobs run to their wait() in %s (%.0f jobs/s, load %s)\n", n, time.Since(t).Round(time.Millisecond),
		float64(n)/time.Since(t).Seconds(), loadavg())
	return nil
}

// stepWatch sees the step after wait() start, and notes when the wait()
// step itself started again (the job was picked up and replayed).
type stepWatch struct {
	mu      sync.Mutex
	waiters map[string]chan time.Time
	resumed map[string]time.Time
}

func (w *stepWatch) Record(job.Record)             {}
func (w *stepWatch) Progress(string, job.Progress) {}
func (w *stepWatch) Step(ev engine.StepEvent) {
	if ev.Done || ev.Replayed || (ev.Key != "1" && ev.Key != "2") {
		return
	}
	t := time.Now()
	w.mu.Lock()
	if ev.Key == "1" {
		w.resumed[ev.JobID] = t
		w.mu.Unlock()
		return
	}
	ch := w.waiters[ev.JobID]
	w.mu.Unlock()
	if ch != nil {
		select {
		case ch <- t:
		default:
		}
	}
}

func (w *stepWatch) expect(id string) chan time.Time {
	ch := make(chan time.Time, 1)
	w.mu.Lock()
	w.waiters[id] = ch
	w.mu.Unlock()
	return ch
}

func vmRSS() (rss, hwm float64) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = v / 1024
		case "VmHWM:":
			hwm = v / 1024
		}
	}
	return rss, hwm
}

// childB4: a fresh engine over the store of n waiting jobs runs Serve;
// signals go to random waiting jobs one after another, each timed from
// the Signal call to the observer seeing the step after wait() start.
func childB4(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	st, e, err := open(ctx, dir)
	if err != nil {
		return err
	}
	defer st.Close()
	defer e.Close()
	jobs, err := waitingIDs(ctx, st)
	if err != nil {
		return err
	}
	runtime.GC()
	rss0, _ := vmRSS()
	w := &stepWatch{waiters: map[string]chan time.Time{}, resumed: map[string]time.Time{}}
	var ended atomic.Int64
	sctx, stop := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() {
		served <- e.Serve(sctx, engine.ServeOptions{Observer: w, Ended: func(*job.Job) { ended.Add(1) }})
	}()
	// Serve's first look at the store, with nothing due.
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	rss1, _ := vmRSS()
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
	n := min(*b4Signals, len(jobs))
	lat := make([]time.Duration, 0, n)
	// The phases of each: the Signal call (a store write), Serve picking
	// the job up until its wait() step runs again (Due, Claim, journal and
	// signals read, replay), and from there to the next step (the wait
	// step's checkpoint: a store write).
	var phSignal, phPickup, phCommit []time.Duration
	deadline := time.Now().Add(5 * time.Minute)
	load := loadavg()
	for i := range n {
		if time.Now().After(deadline) {
			break
		}
		id := jobs[i]
		ch := w.expect(id)
		t := time.Now()
		if _, err := e.Signal(ctx, id, "go", json.RawMessage(`{"i":`+strconv.Itoa(i)+`}`), "bench"); err != nil {
			stop()
			return fmt.Errorf("signal %d to %s: %w", i, id, err)
		}
		signalled := time.Now()
		select {
		case seen := <-ch:
			lat = append(lat, seen.Sub(t))
			w.mu.Lock()
			r := w.resumed[id]
			w.mu.Unlock()
			if !r.IsZero() && r.After(signalled) {
				phSignal = append(phSignal, signalled.Sub(t))
				phPickup = append(phPickup, r.Sub(signalled))
				phCommit = append(phCommit, seen.Sub(r))
			}
		case <-time.After(10 * time.Second):
			stop()
			return fmt.Errorf("signal %d to %s: the job did not resume within 10s", i, id)
		}
	}
	// Let the last jobs end, bounded.
	for end := time.Now().Add(30 * time.Second); ended.Load() < int64(len(lat)) && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	runtime.GC()
	rss2, hwm := vmRSS()
	stop()
	<-served
	if len(lat) == 0 {
		return errors.New("no signal timed")
	}
	sorted := slices.Clone(lat)
	slices.Sort(sorted)
	pct := func(p float64) time.Duration { return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))] }
	p99 := pct(0.99)
	fmt.Printf("B4: %d waiting jobs; RSS after runtime.GC: %.1f MiB loaded, %.1f MiB with Serve idle, %.1f MiB after the signals (peak VmHWM %.1f MiB) (goal < 300 MiB): %s\n",
		len(jobs), rss0, rss1, rss2, hwm, verdict(max(rss1, rss2) < 300))
	fmt.Printf("B4: %d signals, signal to resumed step: p50 %s, p90 %s, p99 %s, max %s (goal p99 < 50 ms): %s; %d jobs ended (load %s, after %s)\n",
		len(lat), ms(pct(0.5)), ms(pct(0.9)), ms(p99), ms(sorted[len(sorted)-1]), verdict(p99 < 50*time.Millisecond), ended.Load(), load, loadavg())
	phase := func(ds []time.Duration) string {
		if len(ds) == 0 {
			return "-"
		}
		slices.Sort(ds)
		return fmt.Sprintf("p50 %s, p99 %s", ms(ds[len(ds)/2]), ms(ds[min(len(ds)-1, len(ds)*99/100)]))
	}
	fmt.Printf("B4: phases (%d signals): Signal call %s; Serve pick-up to wait() running again %s; wait() checkpoint to next step %s\n",
		len(phSignal), phase(phSignal), phase(phPickup), phase(phCommit))
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func waitingIDs(ctx context.Context, st *sqlite.Store) ([]string, error) {
	var ids []string
	after := ""
	for {
		page, err := st.Jobs(ctx, job.Filter{States: []job.State{job.Waiting}, AfterID: after, Limit: 10000}, time.Now())
		if err != nil {
			return nil, err
		}
		for _, j := range page {
			ids = append(ids, j.ID)
		}
		if len(page) < 10000 {
			return ids, nil
		}
		after = page[len(page)-1].ID
	}
}

// b5Workflow: three sh() steps, each appending its step id to ran.txt.
const b5Workflow = `def main():
    for i in range(3):
        sh("echo %s >> @DIR@/ran.txt" % step_id())
`

// childB5Create stores n queued jobs of b5Workflow, persist always.
func childB5Create(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, e, err := open(ctx, dir)
	if err != nil {
		return err
	}
	defer st.Close()
	defer e.Close()
	src := source(strings.ReplaceAll(b5Workflow, "@DIR@", dir))
	var jobs []*job.Job
	for range *b5Jobs {
		p, err := e.Prepare(ctx, engine.Spec{Source: src, Persist: job.PersistAlways})
		if err != nil {
			return err
		}
		jobs = append(jobs, p.Job)
	}
	return e.Create(ctx, src, false, jobs...)
}

// b5: n queued jobs start at once in a drover child (resume --all
// --concurrency n) that is killed with SIGKILL when about half of their
// side effects happened; then drover resume --all is timed, and the side
// effects are checked: no step committed before the kill ran again.
func (h *harness) b5() error {
	dir := filepath.Join(h.dir, "b5")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := h.childRun("B5-create", dir, 3*time.Minute); err != nil {
		return err
	}
	n := *b5Jobs
	db := filepath.Join(dir, "drover.db")
	ran := filepath.Join(dir, "ran.txt")
	killAt := n * 3 / 2

	cmd := exec.Command(h.bin, "resume", "--all", "--concurrency", strconv.Itoa(n))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DROVER_DB="+db)
	if err := cmd.Start(); err != nil {
		return err
	}
	waited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(waited) }()
	t := time.Now()
	killed := false
	for lines := 0; time.Since(t) < 3*time.Minute; time.Sleep(2 * time.Millisecond) {
		if lines = countLines(ran); lines >= killAt {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			killed = true
			break
		}
		select {
		case <-waited:
			return fmt.Errorf("the drover child ended before the kill (%d side effects)", lines)
		default:
		}
	}
	if !killed {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-waited
		return errors.New("no kill point reached within 3 minutes")
	}
	<-waited
	sideBefore := countLines(ran)
	load := loadavg()

	// What the store says was committed before the kill.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := sqlite.Open(ctx, db)
	if err != nil {
		return err
	}
	all, err := st.Jobs(ctx, job.Filter{}, time.Now())
	if err != nil {
		st.Close()
		return err
	}
	states := map[job.State]int{}
	committed := map[string]bool{} // job/key of done steps
	e := engine.New(engine.Options{Store: st})
	for _, j := range all {
		states[e.EffectiveState(j)]++
		steps, err := st.Journal(ctx, j.ID)
		if err != nil {
			st.Close()
			return err
		}
		for _, s := range steps {
			if s.Status == job.StepDone {
				committed[j.ID+"/"+s.Key] = true
			}
		}
	}
	e.Close()
	st.Close()
	var st2 []string
	for _, s := range job.AllStates {
		if c := states[s]; c > 0 {
			st2 = append(st2, fmt.Sprintf("%d %s", c, s))
		}
	}
	fmt.Printf("B5: killed after %s with %d of %d side effects done; store: %s; %d steps committed (load %s)\n",
		time.Since(t).Round(time.Millisecond), sideBefore, 3*n, strings.Join(st2, ", "), len(committed), load)

	r, err := h.drover(db, 5*time.Minute, "resume", "--all")
	if err != nil {
		return err
	}
	// Check: every job completed with 3 steps, and the side effects.
	st, err = sqlite.Open(ctx, db)
	if err != nil {
		return err
	}
	defer st.Close()
	all, err = st.Jobs(ctx, job.Filter{}, time.Now())
	if err != nil {
		return err
	}
	completed, stepsOK := 0, 0
	for _, j := range all {
		if j.State == job.Completed {
			completed++
		}
		if j.Steps == 3 {
			stepsOK++
		}
	}
	counts := map[string]int{}
	f, err := os.Open(ran)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		counts[strings.TrimSpace(sc.Text())]++
	}
	f.Close()
	committedRerun, uncommittedRerun, missing := 0, 0, 0
	for _, j := range all {
		for k := 1; k <= 3; k++ {
			key := j.ID + "/" + strconv.Itoa(k)
			c := counts[key]
			switch {
			case c == 0:
				missing++
			case c > 1 && committed[key]:
				committedRerun++
			case c > 1:
				uncommittedRerun += c - 1
			}
		}
	}
	sideAfter := countLines(ran)
	ok := completed == n && stepsOK == n && committedRerun == 0 && missing == 0 && r.code == 0
	fmt.Printf("B5: drover resume --all: %s (exit %d, peak RSS %.1f MiB polled), %d steps replayed and %d run for real; %d/%d jobs completed with 3 steps each; committed steps run again: %d (goal 0); steps never run: %d; uncommitted steps run again: %d (allowed: at least once): %s (load %s)\n",
		r.wall.Round(time.Millisecond), r.code, float64(r.hwm)/1024, len(committed), sideAfter-sideBefore, completed, n, committedRerun, missing, uncommittedRerun, verdict(ok), loadavg())
	if r.code != 0 {
		fmt.Printf("B5: resume stderr tail: %s\n", tail(r.stderr, 800))
	}
	// The reference: as many /bin/sh runs as the resume ran steps for
	// real, 64 at a time, started from this process with os/exec.
	ref, err := shReference(filepath.Join(dir, "ref.txt"), sideAfter-sideBefore, 64)
	if err != nil {
		return err
	}
	fmt.Printf("B5: reference: %d runs of /bin/sh -c 'echo ... >> file', 64 at a time, no drover: %s (load %s)\n",
		sideAfter-sideBefore, ref.Round(time.Millisecond), loadavg())
	// drover runs each local command under `drover __supervise` (the
	// drover binary itself), so that a killed drover takes its commands
	// with it: the same runs started that way, still without drover.
	sup, err := shReference(filepath.Join(dir, "ref.txt"), sideAfter-sideBefore, 64, h.bin, "__supervise")
	if err != nil {
		return err
	}
	fmt.Printf("B5: reference: the same runs under `drover __supervise`, 64 at a time, no engine: %s (load %s)\n",
		sup.Round(time.Millisecond), loadavg())
	return nil
}

func shReference(file string, n, conc int, prefix ...string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	var failed atomic.Int64
	t := time.Now()
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			argv := append(slices.Clone(prefix), "/bin/sh", "-c", "echo "+strconv.Itoa(i)+" >> "+file)
			if err := exec.CommandContext(ctx, argv[0], argv[1:]...).Run(); err != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		return 0, fmt.Errorf("%d reference shells failed", failed.Load())
	}
	return time.Since(t), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func countLines(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\n")
}
