package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
)

func benchStore(b *testing.B) *Store {
	b.Helper()
	s, err := Open(context.Background(), filepath.Join(b.TempDir(), "drover.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

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
// single caller (B1): every iteration is a transaction and a sync. fresh
// starts from a new store, whose WAL file grows during its first few
// hundred commits; used starts from a store whose WAL has been through a
// checkpoint once, as any store in use has.
func BenchmarkApplySequential(b *testing.B) {
	for _, warm := range []int{0, 500} {
		name := "fresh"
		if warm > 0 {
			name = "used"
		}
		b.Run(name, func(b *testing.B) {
			s := benchStore(b)
			ctx := context.Background()
			if err := s.CreateJobs(ctx, testSource(), &job.Job{ID: "seq", Owner: "bench", LeaseUntil: time.Now().Add(time.Hour)}); err != nil {
				b.Fatal(err)
			}
			for i := range warm {
				if err := s.Apply(ctx, stepUpdate("seq", "bench", -1-i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := range b.N {
				if err := s.Apply(ctx, stepUpdate("seq", "bench", i)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkApplyParallel is the same Apply from 64 goroutines, each on its
// own job: group commit shares the syncs among them.
func BenchmarkApplyParallel(b *testing.B) {
	s := benchStore(b)
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
// completes it, and a few reads. It reports jobs/s.
func BenchmarkOneStepJobs(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	src := testSource()
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

// BenchmarkFdatasync is the reference: write 4 KiB and fdatasync, in the
// directory the stores use. overwrite rewrites the same block, as SQLite
// does once its WAL has been reset; append grows the file, which also
// commits the size to the file system journal.
func BenchmarkFdatasync(b *testing.B) {
	for _, mode := range []string{"overwrite", "append"} {
		b.Run(mode, func(b *testing.B) {
			f, err := os.Create(filepath.Join(b.TempDir(), "sync"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, 4096)
			for i := range buf {
				buf[i] = byte(i)
			}
			if _, err := f.WriteAt(buf, 0); err != nil {
				b.Fatal(err)
			}
			if err := syscall.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				off := int64(0)
				if mode == "append" {
					off = int64(i+1) * 4096
				}
				if _, err := f.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
				if err := syscall.Fdatasync(int(f.Fd())); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
