package clustertest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestBenchServers measures jobs per second with one, two and three
// servers on one database (docs/benchmarks.md, "PostgreSQL and several
// servers"). It runs only when DROVER_CLUSTER_BENCH=1; DROVER_CLUSTER_JOBS
// sets the number of jobs (default 3000).
func TestBenchServers(t *testing.T) {
	if os.Getenv("DROVER_CLUSTER_BENCH") != "1" {
		t.Skip("a benchmark: set DROVER_CLUSTER_BENCH=1 to run it")
	}
	jobs := 3000
	if n, err := strconv.Atoi(os.Getenv("DROVER_CLUSTER_JOBS")); err == nil && n > 0 {
		jobs = n
	}
	const wf = `
def main(dir):
    return now()
`
	for servers := 1; servers <= 3; servers++ {
		t.Run(fmt.Sprintf("servers=%d", servers), func(t *testing.T) {
			c := newCluster(t)
			c.start(servers)
			conn, err := pgx.Connect(context.Background(), c.db)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			start := time.Now()
			c.submitMany(jobs, wf)
			submitted := time.Since(start)
			deadline := start.Add(5 * time.Minute)
			for {
				var done int
				if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM drover.jobs WHERE state = 'completed'").Scan(&done); err != nil {
					t.Fatal(err)
				}
				if done == jobs {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d jobs completed in 5 minutes", done, jobs)
				}
				time.Sleep(20 * time.Millisecond)
			}
			took := time.Since(start)
			load, _ := os.ReadFile("/proc/loadavg")
			t.Logf("servers=%d jobs=%d submitted in %s (%.0f/s), all completed in %s: %.0f jobs/s; load %s",
				servers, jobs, submitted.Round(time.Millisecond), float64(jobs)/submitted.Seconds(),
				took.Round(time.Millisecond), float64(jobs)/took.Seconds(), load[:len(load)-1])
		})
	}
}
