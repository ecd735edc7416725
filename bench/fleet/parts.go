package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/remote"
)

type f1Result struct {
	drover, bare, engine measurement
	tools                map[string]measurement
}

const trueStar = `
def main():
    sh("true")
`

// nowStar is the same fan-out without SSH: one journaled step per child
// that starts no process, to show what the engine and the store cost.
const nowStar = `
def main():
    now()
`

// runF1 measures sh("true") on each fleet size.
func (h *harness) runF1(sizes []int, tools []string) map[int]f1Result {
	wf := h.workflow("true.star", trueStar)
	nowWf := h.workflow("now.star", nowStar)
	results := map[int]f1Result{}
	for _, n := range sizes {
		inv, list := h.inventory(n), h.hostList(n)
		var ds, bs, es []measurement
		for r := 0; r < h.runs; r++ {
			b := h.measure(exec.Command(h.fanout, "-hosts", "@"+list, "-user", h.s.User, "-key", h.key,
				"-known-hosts", h.known, "-parallel", strconv.Itoa(h.throttle)), false)
			if b.err != nil {
				h.tb.Fatalf("bare fan-out on %d hosts: %v\n%s", n, b.err, b.stderr)
			}
			progress("F1 n=%d run %d: bare fan-out %s", n, r+1, secs(b.wall))
			bs = append(bs, b)

			db := filepath.Join(h.dir, fmt.Sprintf("f1-%d-%d.db", n, r))
			d := h.measure(h.droverCmd(db, "run", wf, "--inventory", inv, "--throttle", strconv.Itoa(h.throttle)), false)
			if d.err != nil {
				h.tb.Fatalf("drover on %d hosts: %v\n%s", n, d.err, d.stderr)
			}
			if err := durable(db, n, 1); err != nil {
				h.tb.Fatalf("drover on %d hosts: the store after the run: %v", n, err)
			}
			progress("F1 n=%d run %d: drover %s, peak RSS %s, %d handshakes", n, r+1, secs(d.wall), mib(d.maxRSS), d.handshakes)
			ds = append(ds, d)

			db = filepath.Join(h.dir, fmt.Sprintf("f1-now-%d-%d.db", n, r))
			names := make([]string, n)
			for i := range names {
				names[i] = fmt.Sprintf("t%d", i+1)
			}
			e := h.measure(h.droverCmd(db, "run", nowWf, "--targets", strings.Join(names, ","), "--throttle", strconv.Itoa(h.throttle)), false)
			if e.err != nil {
				h.tb.Fatalf("drover without SSH on %d: %v\n%s", n, e.err, e.stderr)
			}
			progress("F1 n=%d run %d: drover without SSH %s", n, r+1, secs(e.wall))
			es = append(es, e)
		}
		res := f1Result{drover: median(ds), bare: median(bs), engine: median(es), tools: map[string]measurement{}}
		for _, t := range tools {
			m := h.runTool(t, n, inv, list)
			if m.err != nil {
				progress("F1 n=%d: %s failed: %v\n%s", n, t, m.err, tail(m.stderr, 2000))
				continue
			}
			progress("F1 n=%d: %s %s, process tree peak RSS %s", n, t, secs(m.wall), mib(m.treeRSS))
			res.tools[t] = m
		}
		results[n] = res
		h.printF1Row(n, ds, bs, es, res)
	}
	h.printF1Summary(sizes, results, tools)
	return results
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// runTool runs parallel-ssh or ansible -m raw with host key checking on.
func (h *harness) runTool(tool string, n int, inv, list string) measurement {
	sshOpts := fmt.Sprintf("-F /dev/null -i %s -o UserKnownHostsFile=%s -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes", h.key, h.known)
	var cmd *exec.Cmd
	switch tool {
	case "pssh":
		cmd = exec.Command("parallel-ssh", "-h", list, "-l", h.s.User, "-p", strconv.Itoa(h.throttle), "-t", "300", "-x", sshOpts, "true")
		cmd.Env = h.env()
	case "ansible":
		cmd = exec.Command("ansible", "all", "-i", inv, "-m", "raw", "-a", "true", "-f", strconv.Itoa(h.throttle))
		// Ansible's own defaults (ControlMaster=auto, ControlPersist=60s)
		// plus the key and known_hosts of the others.
		cmd.Env = h.env("ANSIBLE_HOST_KEY_CHECKING=True", "ANSIBLE_PRIVATE_KEY_FILE="+h.key,
			"ANSIBLE_SSH_ARGS=-F /dev/null -o UserKnownHostsFile="+h.known+" -o GlobalKnownHostsFile=/dev/null -o ControlMaster=auto -o ControlPersist=60s",
			"ANSIBLE_LOCAL_TEMP="+filepath.Join(h.dir, "ansible-tmp"), "ANSIBLE_NOCOLOR=1")
	}
	cmd.Dir = h.dir
	m := h.measure(cmd, true)
	h.killLeftovers()
	return m
}

// killLeftovers kills the SSH control masters Ansible's ControlPersist
// left behind (they detach, so they are not in the measured tree): the
// processes whose command line names this harness's directory.
func (h *harness) killLeftovers() {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(b), h.home) || !strings.HasPrefix(string(b), "ssh") {
			continue
		}
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (h *harness) printF1Row(n int, ds, bs, es []measurement, res f1Result) {
	if h.report.Len() > 0 && !strings.Contains(h.report.String(), "### F1") {
		h.printf("### F1: `sh(\"true\")` on N hosts, throttle %d\n\n", h.throttle)
		h.printf("Wall time is the median of %d runs (best in parentheses); drover and the bare fan-out alternate. "+
			"Client CPU is user+sys of the process and the children it waited for; machine CPU is every CPU's non-idle time "+
			"during the run (the sshds and the commands on the hosts share this machine); sshd CPU is the hosts' sshds and what they waited for "+
			"(connections, login shells, commands that did not detach). Processes created is the machine's fork count during the run "+
			"(other processes of the machine included). Handshakes and sessions are what the sshds logged.\n\n", h.runs)
		h.printf("| N | tool | wall | ratio to bare | peak RSS | client CPU | sshd CPU | machine CPU | processes created | handshakes | sessions |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	}
	row := func(name string, m measurement, best time.Duration, rss string) {
		ratio := float64(m.wall) / float64(res.bare.wall)
		b := ""
		if best > 0 {
			b = " (" + secs(best) + ")"
		}
		h.printf("| %d | %s | %s%s | %.2fx | %s | %s | %s | %s | %d | %d | %d |\n", n, name, secs(m.wall), b, ratio, rss, secs(m.cpu), secs(m.sshdCPU), secs(m.machineCPU), m.forks, m.handshakes, m.sessions)
	}
	row("bare x/crypto/ssh (bench/fanout)", res.bare, minWall(bs), mib(res.bare.maxRSS))
	row("drover (durable)", res.drover, minWall(ds), mib(res.drover.maxRSS))
	row("drover, no SSH: one `now()` step per child", res.engine, minWall(es), mib(res.engine.maxRSS))
	for _, t := range []string{"pssh", "ansible"} {
		if m, ok := res.tools[t]; ok {
			name := map[string]string{"pssh": "parallel-ssh", "ansible": "`ansible -m raw`"}[t]
			row(name, m, 0, mib(m.treeRSS)+" (tree)")
		}
	}
}

func (h *harness) printF1Summary(sizes []int, results map[int]f1Result, tools []string) {
	h.printf("\nGoals (F1):\n\n")
	for _, n := range sizes {
		r := results[n]
		ratio := float64(r.drover.wall) / float64(r.bare.wall)
		h.printf("- %d hosts: drover/bare = %.2fx (goal <= 1.3x: %s)", n, ratio, met(ratio <= 1.3))
		if m, ok := r.tools["pssh"]; ok {
			x := float64(m.wall) / float64(r.drover.wall)
			h.printf("; parallel-ssh/drover = %.1fx (goal >= 3x: %s)", x, met(x >= 3))
		}
		if m, ok := r.tools["ansible"]; ok {
			x := float64(m.wall) / float64(r.drover.wall)
			h.printf("; ansible/drover = %.1fx (goal >= 6x: %s)", x, met(x >= 6))
		}
		h.printf("; drover peak RSS %s", mib(r.drover.maxRSS))
		if n >= 500 {
			h.printf(" (goal < 100 MiB at 500 hosts: %s)", met(r.drover.maxRSS < 100*1024))
		}
		h.printf("\n")
	}
	if len(tools) == 0 {
		h.printf("- parallel-ssh and ansible were not run (not installed, or -tools none).\n")
	}
	h.printf("\n")
}

func met(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

// runF2 measures steps sh steps per host on n hosts.
func (h *harness) runF2(n, steps int, f1 map[int]f1Result) {
	wf := h.workflow("steps.star", fmt.Sprintf(`
def main():
    for i in range(%d):
        sh("true")
`, steps))
	inv := h.inventory(n)
	var ms []measurement
	for r := 0; r < h.runs; r++ {
		db := filepath.Join(h.dir, fmt.Sprintf("f2-%d.db", r))
		m := h.measure(h.droverCmd(db, "run", wf, "--inventory", inv, "--throttle", strconv.Itoa(h.throttle)), false)
		if m.err != nil {
			h.tb.Fatalf("F2: %v\n%s", m.err, m.stderr)
		}
		if err := durable(db, n, steps); err != nil {
			h.tb.Fatalf("F2: the store after the run: %v", err)
		}
		progress("F2 run %d: %s, %d handshakes", r+1, secs(m.wall), m.handshakes)
		ms = append(ms, m)
	}
	m := median(ms)
	h.printf("### F2: %d `sh` steps per host on %d hosts, throttle %d\n\n", steps, n, h.throttle)
	h.printf("| wall (median of %d, best) | handshakes | per host | sessions | peak RSS | client CPU | sshd CPU | machine CPU |\n|---|---|---|---|---|---|---|---|\n", len(ms))
	h.printf("| %s (%s) | %d | %.2f | %d | %s | %s | %s | %s |\n\n", secs(m.wall), secs(minWall(ms)), m.handshakes, float64(m.handshakes)/float64(n), m.sessions, mib(m.maxRSS), secs(m.cpu), secs(m.sshdCPU), secs(m.machineCPU))
	h.printf("Goals (F2): one handshake per host: %s (%d for %d hosts)", met(m.handshakes == n), m.handshakes, n)
	if r, ok := f1[n]; ok {
		x := float64(m.wall) / float64(r.drover.wall)
		h.printf("; wall %.2fx F1's %s at %d hosts (goal < 2x: %s)", x, secs(r.drover.wall), n, met(x < 2))
	}
	h.printf("\n\n")
}

// runF3 measures memory per running child job and per idle pooled
// connection, as the difference between two fleet sizes.
func (h *harness) runF3(small, large int) {
	h.printf("### F3: memory per running child job and per idle pooled connection\n\n")
	h.printf("Differences between %d and %d hosts, divided by %d.\n\n", small, large, large-small)
	h.printf("| what | at %d | at %d | per unit |\n|---|---|---|---|\n", small, large)

	// A child job held in memory with no SSH at all: a short durable
	// sleep keeps it loaded (longer ones unload the job).
	idle := h.workflow("idle.star", `
def main():
    sleep(3)
`)
	// A child job running a remote command: job, connection, session.
	busy := h.workflow("busy.star", `
def main():
    sh("sleep 3")
`)
	peak := func(wf string, n int, targets bool) int64 {
		db := filepath.Join(h.dir, fmt.Sprintf("f3-%s-%d.db", filepath.Base(wf), n))
		args := []string{"run", wf, "--throttle", "0"}
		if targets {
			names := make([]string, n)
			for i := range names {
				names[i] = fmt.Sprintf("idle%d", i+1)
			}
			args = append(args, "--targets", strings.Join(names, ","))
		} else {
			args = append(args, "--inventory", h.inventory(n))
		}
		m := h.measure(h.droverCmd(db, args...), false)
		if m.err != nil {
			h.tb.Fatalf("F3 %s on %d: %v\n%s", filepath.Base(wf), n, m.err, m.stderr)
		}
		progress("F3 %s on %d hosts: peak RSS %s, wall %s", filepath.Base(wf), n, mib(m.maxRSS), secs(m.wall))
		return m.maxRSS
	}
	row := func(what string, a, b int64, unit string) {
		per := float64(b-a) / float64(large-small)
		h.printf("| %s | %s | %s | %.0f KiB %s |\n", what, mib(a), mib(b), per, unit)
	}
	a, b := peak(idle, small, true), peak(idle, large, true)
	row("drover process peak RSS, children all running `sleep(3)` (no SSH)", a, b, "per running child job")
	a2, b2 := peak(busy, small, false), peak(busy, large, false)
	row("drover process peak RSS, children all running `sh(\"sleep 3\")` on their hosts", a2, b2, "per child job with its connection and remote command")

	// The connection manager alone, in this process.
	ha, ra := h.poolMemory(small)
	hb, rb := h.poolMemory(large)
	h.printf("| connection manager in-process: Go heap+stacks with N idle pooled connections | %s | %s | %.0f KiB per idle connection |\n",
		mib(ha), mib(hb), float64(hb-ha)/float64(large-small))
	h.printf("| the same, process RSS | %s | %s | %.0f KiB per idle connection |\n\n", mib(ra), mib(rb), float64(rb-ra)/float64(large-small))
}

// poolMemory opens n connections through a connection manager (one
// supervised `true` per host), lets them idle, and returns the Go heap
// and stacks in use and this process's RSS, in KiB, with them open.
func (h *harness) poolMemory(n int) (heap, rss int64) {
	m, err := remote.New(remote.Options{
		SSHConfig: "none", KnownHosts: []string{h.known}, IdentityFiles: []string{h.key},
		AgentSocket: "none", User: h.s.User, HomeDir: h.home, SweepInterval: time.Hour,
	})
	if err != nil {
		h.tb.Fatal(err)
	}
	defer m.Close()
	settle := func() {
		runtime.GC()
		debug.FreeOSMemory()
		time.Sleep(200 * time.Millisecond)
	}
	settle()
	heap0, rss0 := goMemory(), selfRSS()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, h.throttle)
	for i, host := range h.s.Hosts[:n] {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			eh := engine.Host{Name: host.Name, Addr: host.Addr, Port: host.Port, User: h.s.User}
			if _, err := m.Exec(context.Background(), &engine.Command{JobID: fmt.Sprintf("pool%d", n), StepKey: strconv.Itoa(i), Host: eh, Cmd: "true"}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		h.tb.Fatalf("F3 pool: %v", err)
	}
	settle()
	if open := m.Metrics().ConnsOpen; open != int64(n) {
		h.tb.Fatalf("F3 pool: %d connections open, want %d", open, n)
	}
	heap, rss = goMemory()-heap0, selfRSS()-rss0
	progress("F3 pool of %d idle connections: +%s heap and stacks, +%s RSS", n, mib(heap), mib(rss))
	// Remove the step directories the commands left on the hosts.
	for _, host := range h.s.Hosts[:n] {
		eh := engine.Host{Name: host.Name, Addr: host.Addr, Port: host.Port, User: h.s.User}
		_ = m.Forget(context.Background(), eh, fmt.Sprintf("pool%d", n))
	}
	return heap, rss
}

func goMemory() int64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse+ms.StackInuse) / 1024
}

// selfRSS is this process's resident set in KiB.
func selfRSS() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	n, _ := strconv.ParseInt(f[1], 10, 64)
	return n * int64(os.Getpagesize()) / 1024
}
