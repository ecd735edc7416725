// Command fleet is drover's whole-process fan-out benchmark (F1-F3 of
// docs/benchmarks.md). It starts real sshd hosts on loopback addresses
// (the tests' internal/remote/sshtest), builds drover and the bare
// x/crypto/ssh reference bench/fanout, and measures side by side in one
// run:
//
//   - F1: `sh("true")` on each -hosts count at -throttle, every per-host
//     result durable (drover's default persistence, checked in the store
//     afterwards), against bench/fanout (persists nothing) and, when
//     installed, parallel-ssh and `ansible -m raw`; wall time, peak RSS,
//     CPU of the client and of the whole machine, SSH handshakes;
//   - F2: ten `sh` steps per host on -f2-hosts hosts: handshakes counted
//     in the sshd logs (one per host expected) and wall time against F1's;
//   - F3: memory per running child job (whole drover process, peak RSS at
//     two fleet sizes) and per idle pooled connection (the connection
//     manager in this process, heap and RSS at two sizes).
//
// It prints a Markdown report on stdout and progress on stderr.
//
//	go run ./bench/fleet -hosts 200,500 -throttle 50
//
// Run it as root (the hosts log in as the dedicated user drovertest) on an
// otherwise idle machine.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/remote/sshtest"
	"github.com/drover/drover/internal/store/sqlite"
)

type harness struct {
	tb       *benchTB
	s        *sshtest.Server
	dir      string // work directory: inventories, stores, workflows
	home     string // HOME of drover and the tools
	key      string
	known    string
	drover   string // built binaries
	fanout   string
	throttle int
	runs     int
	timeout  time.Duration
	report   strings.Builder
}

func main() {
	testing.Init() // sshtest's clean-up asks testing.Verbose
	hostsFlag := flag.String("hosts", "200,500", "F1: fleet sizes, comma-separated")
	throttle := flag.Int("throttle", 50, "hosts in flight at once (drover --throttle, fanout -parallel, pssh -p, ansible -f)")
	runs := flag.Int("runs", 3, "runs of drover and of the bare fan-out per size (the median is reported)")
	tools := flag.String("tools", "auto", "other tools to compare: auto (those installed), none, or a list of pssh,ansible")
	f2Hosts := flag.Int("f2-hosts", 200, "F2: fleet size")
	f2Steps := flag.Int("f2-steps", 10, "F2: sh steps per host")
	f3Flag := flag.String("f3-hosts", "50,500", "F3: the two fleet sizes whose difference gives memory per job and per connection")
	only := flag.String("only", "f1,f2,f3", "which parts to run")
	timeout := flag.Duration("timeout", 5*time.Minute, "bound on any one measured command")
	droverBin := flag.String("drover", "", "a drover binary to measure (default: go build ./cmd/drover of this module)")
	fanoutBin := flag.String("fanout", "", "a bench/fanout binary (default: go build ./bench/fanout of this module)")
	flag.Parse()

	sizes, err := parseSizes(*hostsFlag)
	f3, err3 := parseSizes(*f3Flag)
	if err != nil || err3 != nil || len(f3) != 2 || f3[0] >= f3[1] {
		fmt.Fprintln(os.Stderr, "fleet: -hosts and -f3-hosts take counts like 200,500 (-f3-hosts exactly two, ascending)")
		os.Exit(2)
	}
	parts := map[string]bool{}
	for _, p := range strings.Split(*only, ",") {
		parts[strings.TrimSpace(p)] = true
	}

	tb, err := newBenchTB()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
	defer tb.cleanup()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "fleet: interrupted; stopping the hosts")
		tb.cleanup()
		os.Exit(130)
	}()

	h := &harness{tb: tb, throttle: *throttle, runs: max(1, *runs), timeout: *timeout}
	h.machine()
	h.build(*droverBin, *fanoutBin)
	need := slices.Max(sizes)
	if parts["f2"] {
		need = max(need, *f2Hosts)
	}
	if parts["f3"] {
		need = max(need, f3[1])
	}
	progress("starting %d sshd hosts", need)
	t0 := time.Now()
	h.s = sshtest.Start(tb, need)
	progress("%d hosts up on %d sshds in %s", need, (need+15)/16, time.Since(t0).Round(time.Millisecond))
	h.setupHome()

	var f1 map[int]f1Result
	if parts["f1"] {
		f1 = h.runF1(sizes, pickTools(*tools))
	}
	if parts["f2"] {
		h.runF2(*f2Hosts, *f2Steps, f1)
	}
	if parts["f3"] {
		h.runF3(f3[0], f3[1])
	}
	load, _ := os.ReadFile("/proc/loadavg")
	h.printf("Load average at the end: %s.\n", strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Print(h.report.String())
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad size %q", p)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no sizes")
	}
	return out, nil
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "fleet: "+format+"\n", args...)
}

func (h *harness) printf(format string, args ...any) { fmt.Fprintf(&h.report, format, args...) }

// machine reports what the figures were measured on.
func (h *harness) machine() {
	model := ""
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	free, _ := exec.Command("free", "-h").Output()
	kernel, _ := exec.Command("uname", "-sr").Output()
	sshd, _ := exec.Command("dpkg-query", "-W", "-f", "${Version}", "openssh-server").Output()
	load, _ := os.ReadFile("/proc/loadavg")
	h.printf("Machine: %d CPUs (`nproc`), %s; %s; Go %s; OpenSSH server %s; load average at start: %s\n\n",
		runtime.NumCPU(), model, strings.TrimSpace(string(kernel)), strings.TrimPrefix(runtime.Version(), "go"),
		strings.TrimSpace(string(sshd)), strings.Join(strings.Fields(string(load))[:3], " "))
	h.printf("```\n$ free -h\n%s```\n\n", free)
}

// build compiles drover and the bare fan-out from this module, unless
// binaries were given.
func (h *harness) build(droverBin, fanoutBin string) {
	h.dir = h.tb.TempDir()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if (droverBin == "" || fanoutBin == "") && (err != nil || gomod == "" || gomod == os.DevNull) {
		h.tb.Fatalf("run from inside the drover module (go env GOMOD: %v), or give -drover and -fanout", err)
	}
	root := filepath.Dir(gomod)
	h.drover, h.fanout = droverBin, fanoutBin
	for _, b := range []struct {
		bin *string
		pkg string
	}{{&h.drover, "./cmd/drover"}, {&h.fanout, "./bench/fanout"}} {
		if *b.bin != "" {
			abs, err := filepath.Abs(*b.bin)
			if err != nil {
				h.tb.Fatal(err)
			}
			*b.bin = abs
			continue
		}
		*b.bin = filepath.Join(h.dir, filepath.Base(b.pkg))
		cmd := exec.Command("go", "build", "-o", *b.bin, b.pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			h.tb.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	if droverBin != "" {
		h.printf("drover: the binary %s.\n\n", droverBin)
		return
	}
	rev, _ := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	h.printf("drover: built with `go build` (default flags) from the working tree at commit %s.\n\n", strings.TrimSpace(string(rev)))
}

// setupHome gives drover and the tools the hosts' client key and
// known_hosts, as a user's ~/.ssh would.
func (h *harness) setupHome() {
	h.home = filepath.Join(h.dir, "home")
	ssh := filepath.Join(h.home, ".ssh")
	if err := os.MkdirAll(ssh, 0o700); err != nil {
		h.tb.Fatal(err)
	}
	h.key = filepath.Join(ssh, "id_ed25519")
	h.known = filepath.Join(ssh, "known_hosts")
	for src, dst := range map[string]string{h.s.ClientKey: h.key, h.s.KnownHosts: h.known} {
		b, err := os.ReadFile(src)
		if err != nil {
			h.tb.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			h.tb.Fatal(err)
		}
	}
}

// env is the environment of measured commands: HOME is the harness's,
// no agent, no drover settings from outside.
func (h *harness) env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "HOME" || k == "SSH_AUTH_SOCK" || strings.HasPrefix(k, "DROVER_") || strings.HasPrefix(k, "ANSIBLE_") {
			continue
		}
		env = append(env, kv)
	}
	return append(append(env, "HOME="+h.home), extra...)
}

// inventory writes an INI inventory of the first n hosts.
func (h *harness) inventory(n int) string {
	p := filepath.Join(h.dir, fmt.Sprintf("hosts-%d.ini", n))
	if _, err := os.Stat(p); err == nil {
		return p
	}
	var b strings.Builder
	b.WriteString("[fleet]\n")
	for _, host := range h.s.Hosts[:n] {
		fmt.Fprintf(&b, "%s ansible_host=%s ansible_port=%d ansible_user=%s\n", host.Name, host.Addr, host.Port, h.s.User)
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		h.tb.Fatal(err)
	}
	return p
}

// hostList writes the first n hosts as addr:port lines.
func (h *harness) hostList(n int) string {
	p := filepath.Join(h.dir, fmt.Sprintf("hosts-%d.txt", n))
	var b strings.Builder
	for _, host := range h.s.Hosts[:n] {
		b.WriteString(host.HostPort() + "\n")
	}
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		h.tb.Fatal(err)
	}
	return p
}

func (h *harness) workflow(name, text string) string {
	p := filepath.Join(h.dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		h.tb.Fatal(err)
	}
	return p
}

// sshdLog counts the successful SSH logins and the sessions (commands,
// subsystems) every sshd has logged.
func (h *harness) sshdLog() (logins, sessions int) {
	logs, _ := filepath.Glob(filepath.Join(h.s.Dir, "sshd*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		logins += strings.Count(string(b), "Accepted publickey for ")
		sessions += strings.Count(string(b), "Starting session: ")
	}
	return
}

// sshdCPU is the CPU time of the hosts' sshds and of everything they
// waited for: the listeners' own time and their reaped children's
// (connections, login shells and the commands those shells waited for).
// Commands that detach from their session (setsid, as drover's
// supervised commands do) are not in it once detached.
func (h *harness) sshdCPU() time.Duration {
	ents, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(cmdline), sshtest.SSHD) || !strings.Contains(string(cmdline), h.s.Dir) {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		st := string(b)
		f := strings.Fields(st[strings.LastIndexByte(st, ')')+1:])
		// state ppid ... utime(12) stime(13) cutime(14) cstime(15), counted from state = 0
		for _, i := range []int{11, 12, 13, 14} {
			n, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * (time.Second / 100)
}

// measurement is one measured process.
type measurement struct {
	wall       time.Duration
	cpu        time.Duration // user+sys of the process and the children it waited for
	machineCPU time.Duration // every CPU of the machine, idle excluded
	maxRSS     int64         // KiB: the process's own peak (VmHWM, polled every 20 ms)
	treeRSS    int64         // KiB: peak of the summed RSS of the process tree, sampled every 100 ms
	handshakes int
	sessions   int
	sshdCPU    time.Duration // the hosts' sshds and what they waited for
	forks      int64         // processes created on the machine during the run
	err        error
	stderr     string
}

// measure runs cmd to its end.
func (h *harness) measure(cmd *exec.Cmd, sampleTree bool) measurement {
	var m measurement
	var stderr strings.Builder
	cmd.Stdout = nil
	cmd.Stderr = &stderr
	hs0, ss0 := h.sshdLog()
	sshd0 := h.sshdCPU()
	cpu0 := machineCPU()
	forks0 := forks()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		m.err = err
		return m
	}
	stop := make(chan struct{})
	peak := make(chan int64, 1)
	if sampleTree {
		go func() { peak <- sampleTreeRSS(cmd.Process.Pid, stop) }()
	} else {
		peak <- 0
	}
	// wait4's ru_maxrss is no good here: a child started with vfork
	// inherits the high-water mark of this process's memory at exec.
	hwm := make(chan int64, 1)
	go func() { hwm <- pollHWM(cmd.Process.Pid, stop) }()
	timer := time.AfterFunc(h.timeout, func() { cmd.Process.Kill() })
	m.err = cmd.Wait()
	timer.Stop()
	m.wall = time.Since(start)
	close(stop)
	m.treeRSS = <-peak
	m.maxRSS = <-hwm
	m.machineCPU = machineCPU() - cpu0
	m.forks = forks() - forks0
	if st := cmd.ProcessState; st != nil {
		m.cpu = st.UserTime() + st.SystemTime()
	}
	// sshd logs the login as it happens; give the last ones a moment.
	time.Sleep(200 * time.Millisecond)
	hs, ss := h.sshdLog()
	m.handshakes, m.sessions = hs-hs0, ss-ss0
	m.sshdCPU = h.sshdCPU() - sshd0
	m.stderr = stderr.String()
	return m
}

// forks is how many processes the machine has created since it booted.
func forks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "processes "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// machineCPU is the CPU time every CPU spent not idle, from /proc/stat.
func machineCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is counted in user already
			break
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ
}

// pollHWM polls a process's peak resident set (VmHWM, KiB) until stop
// closes or the process is gone, and returns the last value read.
func pollHWM(pid int, stop <-chan struct{}) int64 {
	var last int64
	path := "/proc/" + strconv.Itoa(pid) + "/status"
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if b, err := os.ReadFile(path); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
					n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
					last = max(last, n)
				}
			}
		}
		select {
		case <-stop:
			return last
		case <-t.C:
		}
	}
}

// sampleTreeRSS samples the summed RSS of pid and its descendants until
// stop closes, and returns the peak in KiB.
func sampleTreeRSS(pid int, stop <-chan struct{}) int64 {
	page := int64(os.Getpagesize()) / 1024
	var best int64
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		parent := map[int]int{}
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			p, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
			if err != nil {
				continue
			}
			s := string(b)
			if i := strings.LastIndexByte(s, ')'); i >= 0 {
				if f := strings.Fields(s[i+1:]); len(f) > 1 {
					parent[p], _ = strconv.Atoi(f[1])
				}
			}
		}
		var sum int64
		for p := range parent {
			in := false
			for a := p; a > 1; a = parent[a] {
				if a == pid {
					in = true
					break
				}
			}
			if !in {
				continue
			}
			b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/statm")
			if err != nil {
				continue
			}
			if f := strings.Fields(string(b)); len(f) > 1 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				sum += n * page
			}
		}
		best = max(best, sum)
		select {
		case <-stop:
			return best
		case <-t.C:
		}
	}
}

// droverCmd is drover with its own store.
func (h *harness) droverCmd(db string, args ...string) *exec.Cmd {
	cmd := exec.Command(h.drover, args...)
	cmd.Dir = h.dir
	cmd.Env = h.env("DROVER_DB="+db, "XDG_DATA_HOME="+filepath.Join(h.dir, "xdg"))
	return cmd
}

// durable checks the store after a fan-out: the parent completed, with
// want children completed and steps done steps each in their journal.
func durable(db string, want, steps int) error {
	ctx := context.Background()
	st, err := sqlite.OpenOptions(ctx, db, sqlite.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer st.Close()
	top, err := st.Jobs(ctx, job.Filter{TopLevel: true}, time.Now())
	if err != nil {
		return err
	}
	if len(top) != 1 || top[0].State != job.Completed {
		return fmt.Errorf("want one completed parent job, have %d", len(top))
	}
	children, err := st.Jobs(ctx, job.Filter{ParentID: top[0].ID}, time.Now())
	if err != nil {
		return err
	}
	done := 0
	for _, c := range children {
		if c.State != job.Completed {
			return fmt.Errorf("child %s is %s", c.ID, c.State)
		}
		journal, err := st.Journal(ctx, c.ID)
		if err != nil {
			return err
		}
		n := 0
		for _, s := range journal {
			if s.Status == job.StepDone && s.Activity == "sh" {
				n++
			}
		}
		if n != steps {
			return fmt.Errorf("child %s has %d sh steps in its journal, want %d", c.ID, n, steps)
		}
		done++
	}
	if done != want {
		return fmt.Errorf("%d children, want %d", done, want)
	}
	return nil
}

func median(ms []measurement) measurement {
	s := slices.Clone(ms)
	sort.Slice(s, func(i, k int) bool { return s[i].wall < s[k].wall })
	return s[len(s)/2]
}

func minWall(ms []measurement) time.Duration {
	best := ms[0].wall
	for _, m := range ms {
		best = min(best, m.wall)
	}
	return best
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

func pickTools(v string) []string {
	var want []string
	switch v {
	case "none", "":
		return nil
	case "auto":
		want = []string{"pssh", "ansible"}
	default:
		want = strings.Split(v, ",")
	}
	var out []string
	for _, t := range want {
		bin := map[string]string{"pssh": "parallel-ssh", "ansible": "ansible"}[t]
		if bin == "" {
			progress("unknown tool %q", t)
			continue
		}
		if _, err := exec.LookPath(bin); err != nil {
			progress("%s is not installed (apt-get install -y pssh ansible): left out", bin)
			continue
		}
		out = append(out, t)
	}
	return out
}
