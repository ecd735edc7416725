package engine_test

// Engine benchmarks B1-B3 of docs/benchmarks.md, on the real SQLite store
// in a temporary directory and the real local executor. The whole-process
// figures (the drover binary, kill -9, 100,000 waiting jobs) come from
// bench/engine.

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/local"
	"github.com/drover/drover/internal/store/sqlite"
)

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process's CPU time per op since start: on a
// machine shared with other work it varies less than the wall time.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/1e3/float64(b.N), "cpu-µs/op")
}

// benchEngine is an engine over a fresh store in b.TempDir(), configured
// as drover run configures it.
func benchEngine(b *testing.B) (*engine.Engine, context.Context) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	b.Cleanup(cancel)
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "drover.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	e := engine.New(engine.Options{Store: st, Local: &local.Executor{}})
	b.Cleanup(e.Close)
	return e, ctx
}

func benchSource(main string) *job.Source {
	src := &job.Source{Entry: "main.star", Files: map[string]string{"main.star": main}}
	src.Seal()
	return src
}

// benchStart prepares and creates a job held by e, as drover run does.
func benchStart(b *testing.B, ctx context.Context, e *engine.Engine, spec engine.Spec) *job.Job {
	p, err := e.Prepare(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Create(ctx, p.Source, true, p.Job); err != nil {
		b.Fatal(err)
	}
	return p.Job
}

func benchDrive(b *testing.B, ctx context.Context, e *engine.Engine, j *job.Job) *job.Job {
	out, err := e.Drive(ctx, j, nil, nil)
	if err != nil {
		b.Error(err)
		return nil
	}
	if out.State != job.Completed {
		b.Errorf("job %s: %s: %s", out.ID, out.State, out.Error)
	}
	return out
}

// BenchmarkStepAlways is B1: one job of b.N sequential now() steps under
// --persist always. One op is one durable step: a transaction and a sync.
func BenchmarkStepAlways(b *testing.B) {
	e, ctx := benchEngine(b)
	src := benchSource("def main(n):\n    for i in range(n):\n        now()\n")
	// Warm the store file and its WAL as a store in use is.
	benchDrive(b, ctx, e, benchStart(b, ctx, e, engine.Spec{Source: src, Persist: job.PersistAlways, Input: json.RawMessage(`{"n":200}`)}))
	j := benchStart(b, ctx, e, engine.Spec{Source: src, Persist: job.PersistAlways, Input: json.RawMessage(`{"n":` + strconv.Itoa(b.N) + `}`)})
	b.ResetTimer()
	cpu := cpuTime()
	out := benchDrive(b, ctx, e, j)
	b.StopTimer()
	reportCPU(b, cpu)
	if out != nil && out.Steps != b.N {
		b.Fatalf("job ran %d steps, want %d", out.Steps, b.N)
	}
}

// BenchmarkJobs64 is B2: one-step jobs under the default persistence, 64
// at a time, each prepared, created claimed and driven as drover run
// does. One op is one job.
func BenchmarkJobs64(b *testing.B) {
	e, ctx := benchEngine(b)
	src := benchSource("def main():\n    now()\n")
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start, cpu := time.Now(), cpuTime()
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				p, err := e.Prepare(ctx, engine.Spec{Source: src})
				if err != nil {
					b.Error(err)
					return
				}
				if err := e.Create(ctx, p.Source, true, p.Job); err != nil {
					b.Error(err)
					return
				}
				if benchDrive(b, ctx, e, p.Job) == nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
	reportCPU(b, cpu)
}

// BenchmarkForeach10k is B3: one job whose foreach_parallel runs 10,000
// branches of one now() step each, under the default persistence. One op
// is the whole job.
func BenchmarkForeach10k(b *testing.B) {
	e, ctx := benchEngine(b)
	src := benchSource("def one(i):\n    return now()\n\ndef main():\n    return len(foreach_parallel(range(10000), one))\n")
	b.ResetTimer()
	cpu := cpuTime()
	defer func() { reportCPU(b, cpu) }()
	for range b.N {
		j := benchStart(b, ctx, e, engine.Spec{Source: src})
		out := benchDrive(b, ctx, e, j)
		if out == nil {
			return
		}
		if out.Steps != 10000 {
			b.Fatalf("job ran %d steps, want 10000", out.Steps)
		}
	}
}
