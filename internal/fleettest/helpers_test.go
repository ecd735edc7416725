package fleettest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/proctest"
	"github.com/drover/drover/internal/remote/sshtest"
	"github.com/drover/drover/internal/store/sqlite"
)

// droverBin is the drover binary TestMain builds.
var droverBin string

func TestMain(m *testing.M) {
	os.Exit(proctest.Main(m, &droverBin))
}

// fleet is a set of real sshd hosts and a controller: a private HOME
// holding .ssh/known_hosts and .ssh/id_ed25519 as a user would have them,
// a store, and a directory for workflow files.
type fleet struct {
	t    *testing.T
	s    *sshtest.Server
	dir  string // the controller's working directory: workflows, inventories
	home string // HOME of the drover processes
	db   string
	// remote is a scratch directory on the hosts (all hosts are this
	// machine), owned by the hosts' login: side effects of remote
	// commands go there and the test reads them.
	remote string
	ctx    context.Context
	// env is added to the drover processes' environment.
	env []string

	mu    sync.Mutex
	procs []*proc
}

func newFleet(t *testing.T, n int) *fleet {
	t.Helper()
	s := sshtest.Start(t, n)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	f := &fleet{t: t, s: s, dir: dir, home: filepath.Join(dir, "home"), db: filepath.Join(dir, "drover.db"), remote: s.UserDir, ctx: ctx}
	if err := os.MkdirAll(filepath.Join(f.home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.home, ".ssh", "id_ed25519"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	f.syncKnownHosts()
	t.Cleanup(func() {
		f.mu.Lock()
		procs := f.procs
		f.mu.Unlock()
		for _, p := range procs {
			p.Kill()
		}
		f.removeStepDirs()
		cancel()
	})
	return f
}

// removeStepDirs removes what supervised commands of this fleet's jobs
// left in the hosts' login's home (drover removes them when a job ends,
// but not always: see TestKillDuring200HostRun), so that runs of the
// suite do not pile them up there.
func (f *fleet) removeStepDirs() {
	if _, err := os.Stat(f.db); err != nil {
		return
	}
	st, err := sqlite.OpenOptions(context.Background(), f.db, sqlite.Options{ReadOnly: true})
	if err != nil {
		return
	}
	defer st.Close()
	list, err := st.Jobs(context.Background(), job.Filter{}, time.Now())
	if err != nil {
		return
	}
	for _, j := range list {
		os.RemoveAll(filepath.Join(f.s.Home, ".drover", "run", j.ID))
	}
}

// knownHosts is the controller user's known_hosts file.
func (f *fleet) knownHosts() string { return filepath.Join(f.home, ".ssh", "known_hosts") }

// syncKnownHosts copies sshtest's known_hosts (every host's key, plus
// whatever ChangeHostKey or ForgetHostKey did to it) into the user's.
func (f *fleet) syncKnownHosts() {
	f.t.Helper()
	b, err := os.ReadFile(f.s.KnownHosts)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(f.knownHosts(), b, 0o600); err != nil {
		f.t.Fatal(err)
	}
}

// host returns the i-th host (h1 is 0).
func (f *fleet) host(i int) sshtest.Host { return f.s.Hosts[i] }

// invLine is an INI inventory line for h under name, with extra vars.
func (f *fleet) invLine(name string, h sshtest.Host, extra string) string {
	l := fmt.Sprintf("%s ansible_host=%s ansible_port=%d ansible_user=%s", name, h.Addr, h.Port, f.s.User)
	if extra != "" {
		l += " " + extra
	}
	return l + "\n"
}

// write writes a file in the controller's directory and returns its path.
// @R@ in text stands for the remote scratch directory.
func (f *fleet) write(name, text string) string {
	f.t.Helper()
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(text, "@R@", f.remote)), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// proc is a drover process.
type proc = proctest.Proc

func (f *fleet) command(args ...string) *exec.Cmd {
	cmd := exec.Command(droverBin, args...)
	cmd.Dir = f.dir
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "HOME", k == "SSH_AUTH_SOCK", k == "XDG_DATA_HOME", strings.HasPrefix(k, "DROVER_"):
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(env,
		"HOME="+f.home,
		"DROVER_DB="+f.db,
		"DROVER_LEASE=2s",
		"XDG_DATA_HOME="+filepath.Join(f.dir, "data"),
	)
	cmd.Env = append(cmd.Env, f.env...)
	return cmd
}

// start starts drover in the background.
func (f *fleet) start(args ...string) *proc {
	f.t.Helper()
	p := proctest.Start(f.t, f.command(args...), args)
	f.mu.Lock()
	f.procs = append(f.procs, p)
	f.mu.Unlock()
	return p
}

// drover runs drover to its end.
func (f *fleet) drover(timeout time.Duration, args ...string) (*proc, int) {
	f.t.Helper()
	p := f.start(args...)
	return p, p.Wait(f.t, timeout)
}

// must runs drover and fails the test unless it exits with want.
func (f *fleet) must(want int, timeout time.Duration, args ...string) *proc {
	f.t.Helper()
	p, code := f.drover(timeout, args...)
	if code != want {
		f.t.Fatalf("want exit %d from %s", want, p)
	}
	return p
}

// showView mirrors drover show --json.
type showView struct {
	Job      job.Job           `json:"job"`
	Steps    []job.Step        `json:"steps"`
	Children map[job.State]int `json:"children"`
	Failed   []struct {
		ID    string `json:"id"`
		Host  string `json:"host"`
		Error string `json:"error"`
	} `json:"failed_children"`
}

func (f *fleet) show(id string) *showView {
	f.t.Helper()
	p := f.must(0, 30*time.Second, "show", id, "--json")
	var v showView
	if err := json.Unmarshal(p.Stdout.Bytes(), &v); err != nil {
		f.t.Fatalf("drover show --json: %v\n%s", err, p.Stdout.String())
	}
	return &v
}

// failedError returns the error show lists for a failed host, "" if the
// host is not among the failed.
func (v *showView) failedError(host string) string {
	for _, c := range v.Failed {
		if c.Host == host {
			return c.Error
		}
	}
	return ""
}

// jobs lists jobs with drover jobs --json (--all: child jobs too).
func (f *fleet) jobs(all bool) []job.Job {
	f.t.Helper()
	args := []string{"jobs", "--json"}
	if all {
		args = append(args, "--all")
	}
	p := f.must(0, 30*time.Second, args...)
	var list []job.Job
	if err := json.Unmarshal(p.Stdout.Bytes(), &list); err != nil {
		f.t.Fatalf("drover jobs --json: %v\n%s", err, p.Stdout.String())
	}
	return list
}

// parent returns the one top-level job, waiting for it to be created.
func (f *fleet) parent() job.Job {
	f.t.Helper()
	var list []job.Job
	f.eventually(20*time.Second, "the parent job to be created", func() bool {
		list = f.jobs(false)
		return len(list) > 0
	})
	if len(list) != 1 {
		f.t.Fatalf("%d top-level jobs, want 1: %+v", len(list), list)
	}
	return list[0]
}

// children returns a parent's child jobs by host, read from the store.
func (f *fleet) children(parentID string) map[string]*job.Job {
	f.t.Helper()
	out := map[string]*job.Job{}
	f.withStore(func(st *sqlite.Store) {
		list, err := st.Jobs(f.ctx, job.Filter{ParentID: parentID}, time.Now())
		if err != nil {
			f.t.Fatal(err)
		}
		for _, j := range list {
			out[j.Target] = j
		}
	})
	return out
}

// withStore opens the store read-only.
func (f *fleet) withStore(fn func(st *sqlite.Store)) {
	f.t.Helper()
	st, err := sqlite.OpenOptions(f.ctx, f.db, sqlite.Options{ReadOnly: true})
	if err != nil {
		f.t.Fatalf("open store: %v", err)
	}
	defer st.Close()
	fn(st)
}

// output returns a job's output lines.
func (f *fleet) output(id string) []string {
	f.t.Helper()
	p := f.must(0, 30*time.Second, "output", id)
	return lines(p.Stdout.String())
}

func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// remoteLines reads a file of the remote scratch directory.
func (f *fleet) remoteLines(name string) []string {
	b, err := os.ReadFile(filepath.Join(f.remote, name))
	if err != nil {
		return nil
	}
	return lines(string(b))
}

func (f *fleet) remoteExists(name string) bool {
	_, err := os.Stat(filepath.Join(f.remote, name))
	return err == nil
}

// eventually polls cond until it holds, failing the test after timeout.
func (f *fleet) eventually(timeout time.Duration, what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// remoteProcs lists the processes of the hosts' login whose command
// line is exactly cmdline: the target's process table (the hosts are this
// machine).
func (f *fleet) remoteProcs(cmdline string) []string {
	return f.pgrep("^" + regexp.QuoteMeta(cmdline) + "$")
}

// remoteProcsWith lists the processes of the hosts' login whose command
// line contains s.
func (f *fleet) remoteProcsWith(s string) []string {
	return f.pgrep(regexp.QuoteMeta(s))
}

func (f *fleet) pgrep(pattern string) []string {
	out, err := exec.Command("pgrep", "-a", "-u", f.s.User, "-f", pattern).Output()
	if err != nil {
		return nil // pgrep exits 1 when nothing matches
	}
	return lines(string(out))
}

// killRemote kills what a test left on the hosts (after a failure).
func (f *fleet) killRemote(cmdline string) {
	_ = exec.Command("pkill", "-KILL", "-u", f.s.User, "-f", "^"+regexp.QuoteMeta(cmdline)+"$").Run()
}

// uniqueSleep returns a sleep duration no other test uses, so that its
// process can be found on the target by its command line. Its last digit
// is never 0: a duration that passes through an inventory var becomes a
// float, and str() of 5.120 is "5.12", which pgrep would not find.
func uniqueSleep(base int) string {
	frac := time.Now().UnixNano()%100000*10 + 1
	return fmt.Sprintf("%d.%06d", base, frac)
}

// interval is when a host's command ran, from "host start end" lines.
type interval struct {
	host       string
	start, end float64
}

// readIntervals parses lines of "host start end" (seconds).
func readIntervals(t *testing.T, ls []string) []interval {
	t.Helper()
	var out []interval
	for _, l := range ls {
		fs := strings.Fields(l)
		if len(fs) != 3 {
			t.Fatalf("bad interval line %q", l)
		}
		a, err1 := strconv.ParseFloat(fs[1], 64)
		b, err2 := strconv.ParseFloat(fs[2], 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("bad interval line %q", l)
		}
		out = append(out, interval{fs[0], a, b})
	}
	sort.Slice(out, func(i, k int) bool { return out[i].start < out[k].start })
	return out
}

// maxOverlap is the largest number of intervals running at one instant.
func maxOverlap(iv []interval) int {
	type ev struct {
		at float64
		d  int
	}
	var evs []ev
	for _, i := range iv {
		evs = append(evs, ev{i.start, 1}, ev{i.end, -1})
	}
	sort.Slice(evs, func(i, k int) bool {
		if evs[i].at != evs[k].at {
			return evs[i].at < evs[k].at
		}
		return evs[i].d < evs[k].d
	})
	n, best := 0, 0
	for _, e := range evs {
		n += e.d
		best = max(best, n)
	}
	return best
}

func removeFile(dir, name string) error { return os.Remove(filepath.Join(dir, name)) }
