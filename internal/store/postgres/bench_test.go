package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
)

// The benchmarks run against the test server (see postgres_test.go), each
// on a fresh database.

// stepUpdate is one done step of a job, the commonest write of all.
func stepUpdate(id, owner string, n int) *job.Update {
	now := time.Now()
	return &job.Update{JobID: id, Owner: owner, Steps: []job.Step{{
		Key: strconv.Itoa(n), Activity: "sh", Digest: "0123456789abcdef", Status: job.StepDone,
		Result:   json.RawMessage(`{"stdout":"ok\n","stderr":"","code":0,"host":"local","duration_ms":3}`),
		Attempts: 1, Host: "local", Position: "main.star:4:11", Started: now, Ended: now,
	}}}
}

// BenchmarkApplySequential is one Apply of one step per iteration from a
// single caller: every iteration is a transaction, one round trip and a
// WAL flush.
func BenchmarkApplySequential(b *testing.B) {
	s, _ := openFresh(b, Options{})
	ctx := context.Background()
	if err := s.CreateJobs(ctx, testSource(), &job.Job{ID: "seq", Owner: "bench", LeaseUntil: time.Now().Add(time.Hour)}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		if err := s.Apply(ctx, stepUpdate("seq", "bench", i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyParallel is the same Apply from 64 goroutines, each on its
// own job: group commit shares the transactions among them.
func BenchmarkApplyParallel(b *testing.B) {
	s, _ := openFresh(b, Options{})
	ctx := context.Background()
	var next atomic.Int64
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := fmt.Sprint("par-", next.Add(1))
		if err := s.CreateJobs(ctx, testSource(), &job.Job{ID: id, Owner: "bench", LeaseUntil: time.Now().Add(time.Hour)}); err != nil {
			b.Error(err)
			return
		}
		for i := 0; pb.Next(); i++ {
			if err := s.Apply(ctx, stepUpdate(id, "bench", i)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkOneStepJobs is the shape of drover running one-step jobs 64 at
// a time: per job a CreateJobs with the owner set, one Apply that
// completes it, and two reads. It reports jobs/s; -benchtime=10000x is
// the 10,000 jobs of the performance target. Its variants compare the
// write designs: group commit with one, two (the default) or four writers,
// and no batching, every write its own transaction on its own connection
// of a pool of 16, which leaves grouping to PostgreSQL's own group commit
// of WAL flushes.
func BenchmarkOneStepJobs(b *testing.B) {
	for _, v := range []struct {
		name  string
		opt   Options
		conns string
	}{
		{"batched/writers=2", Options{}, ""},
		{"batched/writers=1", Options{Writers: 1}, ""},
		{"batched/writers=4", Options{Writers: 4}, "8"},
		{"unbatched/conns=16", Options{MaxBatch: 1, Writers: 16}, "20"},
	} {
		b.Run(v.name, func(b *testing.B) {
			u := freshDB(b)
			if v.conns != "" {
				u = withPath(b, u, "", "pool_max_conns", v.conns)
			}
			s := openURL(b, u, v.opt)
			defer s.Close()
			oneStepJobs(b, s)
		})
	}
}

func oneStepJobs(b *testing.B, s *Store) {
	ctx := context.Background()
	src := testSource()
	if err := s.CreateJobs(ctx, src); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("job-%08d", next.Add(1))
			now := time.Now()
			j := &job.Job{ID: id, Input: json.RawMessage(`{"n":1}`), Owner: "bench", LeaseUntil: now.Add(time.Minute), Created: now}
			if err := s.CreateJobs(ctx, src, j); err != nil {
				b.Error(err)
				return
			}
			done := job.Completed
			u := stepUpdate(id, "bench", 1)
			u.State, u.Ended, u.Result, u.Release = &done, &now, json.RawMessage(`"ok"`), true
			u.Records = []job.Record{{Stream: job.Output, Key: "1/emit/0", Time: now, Value: json.RawMessage(`"ok"`)}}
			if err := s.Apply(ctx, u); err != nil {
				b.Error(err)
				return
			}
			if _, err := s.Job(ctx, id); err != nil {
				b.Error(err)
				return
			}
			if _, err := s.Records(ctx, id, job.Output, 0, 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
}

// BenchmarkTwoServers is queued work shared by two servers on one
// database, each with one poller and up to 64 workers that complete the
// claimed jobs (one Apply each). due+claim is the way engine.Serve takes
// work up: the poller lists due jobs and claims them one by one; claimdue
// claims a batch of them in one statement (ClaimDue). It reports jobs/s
// and how many claims per job lost to the other server.
func BenchmarkTwoServers(b *testing.B) {
	for _, claimDue := range []bool{false, true} {
		name := "due+claim"
		if claimDue {
			name = "claimdue"
		}
		b.Run(name, func(b *testing.B) { twoServers(b, claimDue) })
	}
}

func twoServers(b *testing.B, claimDue bool) {
	u := freshDB(b)
	ctx := context.Background()
	servers := []*Store{openURL(b, u, Options{}), openURL(b, u, Options{})}
	defer servers[0].Close()
	defer servers[1].Close()
	src := testSource()
	jobs := make([]*job.Job, b.N)
	base := time.Now().Add(-time.Hour)
	for i := range jobs {
		jobs[i] = &job.Job{ID: fmt.Sprintf("q-%08d", i), Created: base.Add(time.Duration(i) * time.Microsecond)}
	}
	for i := 0; i < len(jobs); i += 1000 {
		if err := servers[0].CreateJobs(ctx, src, jobs[i:min(i+1000, len(jobs))]...); err != nil {
			b.Fatal(err)
		}
	}
	var done, lost atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for si, s := range servers {
		wg.Go(func() {
			owner := fmt.Sprint("server-", si)
			const slots = 64
			running := make(chan struct{}, slots)
			var workers sync.WaitGroup
			defer workers.Wait()
			complete := func(id string) {
				workers.Go(func() {
					defer func() { <-running }()
					st := job.Completed
					if err := s.Apply(ctx, &job.Update{JobID: id, Owner: owner, State: &st, Release: true}); err != nil {
						b.Error(err)
					}
					done.Add(1)
				})
			}
			for done.Load() < int64(b.N) {
				var claimed []string
				if claimDue {
					free := slots - len(running)
					if free == 0 {
						time.Sleep(100 * time.Microsecond)
						continue
					}
					got, err := s.ClaimDue(ctx, owner, time.Now().Add(time.Minute), time.Now(), free, true)
					if err != nil {
						b.Error(err)
						return
					}
					for _, j := range got {
						running <- struct{}{}
						complete(j.ID)
						claimed = append(claimed, j.ID)
					}
				} else {
					ids, err := s.Due(ctx, time.Now(), slots)
					if err != nil {
						b.Error(err)
						return
					}
					for _, id := range ids {
						running <- struct{}{}
						if _, err := s.Claim(ctx, id, owner, time.Now().Add(time.Minute), "", []job.State{job.Queued}); err != nil {
							<-running
							lost.Add(1)
							continue
						}
						complete(id)
						claimed = append(claimed, id)
					}
				}
				if len(claimed) == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(done.Load())/time.Since(start).Seconds(), "jobs/s")
	b.ReportMetric(float64(lost.Load())/float64(b.N), "lost-claims/job")
}
