package postgres

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/local"
)

// B1 and B2 of docs/benchmarks.md on PostgreSQL: the engine as drover run
// configures it, over this store on a fresh database of the test server.

func engineOn(b *testing.B) (*engine.Engine, *Store, context.Context) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	b.Cleanup(cancel)
	s, _ := openFresh(b, Options{})
	e := engine.New(engine.Options{Store: s, Local: &local.Executor{}})
	b.Cleanup(e.Close)
	return e, s, ctx
}

func engineSource(main string) *job.Source {
	src := &job.Source{Entry: "main.star", Files: map[string]string{"main.star": main}}
	src.Seal()
	return src
}

func engineRun(b *testing.B, ctx context.Context, e *engine.Engine, spec engine.Spec) *job.Job {
	p, err := e.Prepare(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Create(ctx, p.Source, true, p.Job); err != nil {
		b.Fatal(err)
	}
	out, err := e.Drive(ctx, p.Job, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	if out.State != job.Completed {
		b.Fatalf("job %s: %s: %s", out.ID, out.State, out.Error)
	}
	return out
}

// BenchmarkEngineCommit is B1's baseline on PostgreSQL: one bare
// transaction per op, a one-row INSERT committed (a round trip and a WAL
// flush), from one caller on the pool.
func BenchmarkEngineCommit(b *testing.B) {
	_, s, ctx := engineOn(b)
	if _, err := s.pool.Exec(ctx, "CREATE TABLE bench_commit (id bigserial PRIMARY KEY, v text)"); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := s.pool.Exec(ctx, "INSERT INTO bench_commit (v) VALUES ($1)", "x"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEngineStepAlways is B1 on PostgreSQL: one job of b.N
// sequential now() steps under --persist always; one op is one durable
// step.
func BenchmarkEngineStepAlways(b *testing.B) {
	e, _, ctx := engineOn(b)
	src := engineSource("def main(n):\n    for i in range(n):\n        now()\n")
	engineRun(b, ctx, e, engine.Spec{Source: src, Persist: job.PersistAlways, Input: json.RawMessage(`{"n":200}`)})
	b.ResetTimer()
	out := engineRun(b, ctx, e, engine.Spec{Source: src, Persist: job.PersistAlways, Input: json.RawMessage(`{"n":` + strconv.Itoa(b.N) + `}`)})
	b.StopTimer()
	if out.Steps != b.N {
		b.Fatalf("job ran %d steps, want %d", out.Steps, b.N)
	}
}

// BenchmarkEngineJobs64 is B2 on PostgreSQL: one-step jobs under the
// default persistence, 64 at a time, each prepared, created claimed and
// driven as drover run does; one op is one job.
func BenchmarkEngineJobs64(b *testing.B) {
	e, _, ctx := engineOn(b)
	src := engineSource("def main():\n    now()\n")
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range 64 {
		wg.Go(func() {
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
				out, err := e.Drive(ctx, p.Job, nil, nil)
				if err != nil || out.State != job.Completed {
					b.Errorf("job %s: %v %v", p.Job.ID, out, err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
}
