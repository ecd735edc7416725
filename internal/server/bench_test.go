package server_test

// Benchmarks of drover server as a process, through its API. Run them
// with:
//
//	go test ./internal/server -run '^$' -bench Server -benchtime 5000x
//
// BenchmarkServerSubmit takes -benchtime Nx as the number of jobs; the
// others run their workload once whatever N is.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/job"
)

// submitAll creates n jobs of src through the API with clients
// concurrent clients, and returns how long it took.
func submitAll(b *testing.B, w *world, n, clients int, src string, params []string) time.Duration {
	b.Helper()
	body, err := json.Marshal(api.CreateJob{Source: &job.Source{Entry: "wf.star", Files: map[string]string{"wf.star": src}}, Params: params})
	if err != nil {
		b.Fatal(err)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				req, _ := http.NewRequest("POST", w.url+"/api/v1/jobs", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+w.tokens["alice"])
				res, err := hc.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusCreated {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d submissions failed", f, n)
	}
	return d
}

// metric reads one value from /metrics.
func metric(b *testing.B, w *world, name string) float64 {
	b.Helper()
	req, _ := http.NewRequest("GET", w.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+w.tokens["val"])
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	b.Fatalf("no metric %s", name)
	return 0
}

func waitMetric(b *testing.B, w *world, name string, want float64, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for metric(b, w, name) < want {
		if time.Now().After(deadline) {
			b.Fatalf("%s = %v after %s, want %v", name, metric(b, w, name), timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rss is a process's resident set size in MiB.
func rss(b *testing.B, pid int) float64 {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// BenchmarkServerSubmit: job submissions per second through the API from
// 64 concurrent clients, each job a real one the server runs to its end
// meanwhile (up to 64 at once), and the same with jobs that stay queued
// behind a busy slot (the API and the store alone).
func BenchmarkServerSubmit(b *testing.B) {
	for _, c := range []struct {
		name    string
		src     string
		flags   []string
		prepare func(w *world)
	}{
		{"run", "def main(i=0):\n    return i\n", []string{"--max-running", "64"}, nil},
		{"queued", "def main(i=0):\n    return i\n", []string{"--max-running", "1"}, func(w *world) {
			w.write("busy.star", "def main():\n    sh(\"sleep 600\")\n")
			w.must("alice", "run", "busy.star", "--detach")
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			w := newWorld(b)
			w.makeTokens()
			w.serve(c.flags...)
			if c.prepare != nil {
				c.prepare(w)
			}
			n := max(b.N, 200)
			b.ResetTimer()
			d := submitAll(b, w, n, 64, c.src, []string{"i=1"})
			b.StopTimer()
			b.ReportMetric(float64(n)/d.Seconds(), "submissions/s")
			b.ReportMetric(0, "ns/op")
			if c.name == "run" {
				start := time.Now()
				waitMetric(b, w, `drover_jobs{state="completed"}`, float64(n), 5*time.Minute)
				b.ReportMetric(float64(n)/(d+time.Since(start)).Seconds(), "completed/s")
			}
		})
	}
}

// BenchmarkServerFanout500: 500 followers of one job's event stream; the
// job emits 200 records. Reports the delay from a record's creation in
// the engine to its arrival at a follower.
func BenchmarkServerFanout500(b *testing.B) {
	const followers, records = 500, 200
	w := newWorld(b)
	w.makeTokens()
	srv := w.serve()
	w.write("emit.star", fmt.Sprintf(`
def main():
    sh("sleep 8")  # while the followers connect
    for i in range(%d):
        emit("record %%d" %% i)
        if i %% 10 == 9:
            sh("sleep 0.1")
`, records))
	{
		id := strings.TrimSpace(w.must("alice", "run", "emit.star", "--detach").stdout)
		w.waitState("alice", id, "running")
		tr := &http.Transport{MaxIdleConnsPerHost: followers, MaxConnsPerHost: followers}
		hc := &http.Client{Transport: tr}
		var wg, connected sync.WaitGroup
		var mu sync.Mutex
		var delays []time.Duration
		var got atomic.Int64
		var ends atomic.Int64
		for range followers {
			wg.Add(1)
			connected.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest("GET", w.url+"/api/v1/jobs/"+id+"/events?streams=output", nil)
				req.Header.Set("Authorization", "Bearer "+w.tokens["alice"])
				res, err := hc.Do(req)
				connected.Done()
				if err != nil {
					b.Error(err)
					return
				}
				defer res.Body.Close()
				br := bufio.NewReader(res.Body)
				var mine []time.Duration
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						break
					}
					if strings.HasPrefix(line, "event: end") {
						ends.Add(1)
						break
					}
					if data, ok := strings.CutPrefix(line, "data: "); ok {
						var r job.Record
						if json.Unmarshal([]byte(data), &r) == nil && r.Seq > 0 {
							mine = append(mine, time.Since(r.Time))
							got.Add(1)
						}
					}
				}
				mu.Lock()
				delays = append(delays, mine...)
				mu.Unlock()
			}()
		}
		connected.Wait()
		waitMetric(b, w, "drover_event_followers", followers, time.Minute)
		rssBefore := rss(b, srv.cmd.Process.Pid)
		b.ResetTimer()
		wg.Wait()
		b.StopTimer()
		var first, last time.Time
		for _, r := range []string{"output"} {
			res := w.must("alice", r, id, "--json")
			lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
			var a, z job.Record
			json.Unmarshal([]byte(lines[0]), &a)
			json.Unmarshal([]byte(lines[len(lines)-1]), &z)
			first, last = a.Time, z.Time
		}
		d := time.Since(first)
		rssAfter := rss(b, srv.cmd.Process.Pid)
		tr.CloseIdleConnections()
		if got.Load() != followers*records || ends.Load() != followers {
			b.Fatalf("%d records and %d ends delivered, want %d and %d", got.Load(), ends.Load(), followers*records, followers)
		}
		sort.Slice(delays, func(i, k int) bool { return delays[i] < delays[k] })
		q := func(p float64) float64 { return float64(delays[int(p*float64(len(delays)-1))].Milliseconds()) }
		b.ReportMetric(q(0.5), "p50-ms")
		b.ReportMetric(q(0.99), "p99-ms")
		b.ReportMetric(q(1), "max-ms")
		b.ReportMetric(float64(got.Load())/d.Seconds(), "events/s")
		b.ReportMetric(last.Sub(first).Seconds(), "emit-s")
		b.ReportMetric(d.Seconds(), "delivered-s")
		b.ReportMetric(rssBefore, "rss-MiB-500-idle-followers")
		b.ReportMetric(rssAfter, "rss-MiB-after")
		b.ReportMetric(0, "ns/op")
	}
}

// BenchmarkServerRSS: the server's resident memory idle, and with 10,000
// jobs waiting for a signal (unloaded: they hold no goroutine).
func BenchmarkServerRSS(b *testing.B) {
	const waiting = 10000
	{
		w := newWorld(b)
		w.makeTokens()
		srv := w.serve()
		time.Sleep(time.Second)
		idle := rss(b, srv.cmd.Process.Pid)
		submitAll(b, w, waiting, 64, "def main(i=0):\n    return wait(\"go\")\n", []string{"i=1"})
		waitMetric(b, w, `drover_jobs{state="waiting"}`, waiting, 5*time.Minute)
		peak := rss(b, srv.cmd.Process.Pid)
		time.Sleep(5 * time.Second) // the Go runtime returns freed memory
		settled := rss(b, srv.cmd.Process.Pid)
		b.ReportMetric(idle, "rss-MiB-idle")
		b.ReportMetric(peak, "rss-MiB-10k-waiting")
		b.ReportMetric(settled, "rss-MiB-10k-waiting-after-5s")
		b.ReportMetric(0, "ns/op")
	}
}
