package remote_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/remote"
	"github.com/drover/drover/internal/remote/sshtest"
)

func TestExec(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	h := engineHost(s, s.Hosts[0])
	job := "exec-" + t.Name()

	var mu sync.Mutex
	var lines []string
	res := execOK(t, m, &engine.Command{
		JobID: job, StepKey: "1", Host: h,
		Cmd:   `echo "one $GREETING"; echo err1 >&2; cat; printf 'no newline'; exit 7`,
		Env:   map[string]string{"GREETING": "it's \"quoted\" $HOME"},
		Stdin: []byte("from stdin\n"),
		Line: func(stream, line string) {
			mu.Lock()
			defer mu.Unlock()
			lines = append(lines, stream+":"+line)
		},
	})
	if want := "one it's \"quoted\" $HOME\nfrom stdin\nno newline"; res.Stdout != want {
		t.Errorf("stdout = %q, want %q", res.Stdout, want)
	}
	if res.Stderr != "err1\n" || res.Code != 7 {
		t.Errorf("stderr = %q, code = %d", res.Stderr, res.Code)
	}
	mu.Lock()
	got := fmt.Sprint(lines)
	mu.Unlock()
	for _, want := range []string{"stdout:one it's", "stdout:from stdin", "stdout:no newline", "stderr:err1"} {
		if !strings.Contains(got, want) {
			t.Errorf("lines %s lack %q", got, want)
		}
	}

	// The command runs under /bin/sh in the login's home, as its user.
	res = execOK(t, m, &engine.Command{JobID: job, StepKey: "2", Host: h, Cmd: `id -un; pwd`})
	if res.Stdout != s.User+"\n"+s.Home+"\n" || res.Code != 0 {
		t.Errorf("id/pwd = %q", res.Stdout)
	}

	// Output larger than any buffer arrives whole and in order.
	res = execOK(t, m, &engine.Command{JobID: job, StepKey: "3", Host: h, Cmd: `i=0; while [ $i -lt 20000 ]; do echo "line $i"; i=$((i+1)); done; echo tail >&2`})
	out := strings.Split(strings.TrimSuffix(res.Stdout, "\n"), "\n")
	if len(out) != 20000 || out[0] != "line 0" || out[19999] != "line 19999" || res.Stderr != "tail\n" {
		t.Errorf("big output: %d lines, first %q last %q, stderr %q", len(out), out[0], out[len(out)-1], res.Stderr)
	}

	if _, err := m.Exec(context.Background(), &engine.Command{JobID: job, StepKey: "4", Host: h, Cmd: "true", Env: map[string]string{"BAD-NAME": "x"}}); err == nil {
		t.Error("an invalid variable name was accepted")
	}
	if mt := m.Metrics(); mt.SessionsOpen != 0 || mt.Handshakes != 1 {
		t.Errorf("metrics after calls: %+v", mt)
	}
}

func TestSessionsShareOneConnection(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	h := engineHost(s, s.Hosts[0])
	for i := 0; i < 10; i++ {
		res := execOK(t, m, &engine.Command{JobID: "share", StepKey: fmt.Sprint(i), Host: h, Cmd: "echo $((40+2))"})
		if res.Stdout != "42\n" {
			t.Fatalf("stdout %q", res.Stdout)
		}
	}
	if mt := m.Metrics(); mt.Handshakes != 1 || mt.Dials != 1 || mt.ConnsOpen != 1 {
		t.Fatalf("10 sequential Execs: %+v, want 1 handshake on 1 connection", mt)
	}

	// 25 at once: 10 sessions per connection and 1 connection per host,
	// so they run in three waves over the same connection.
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 25)
	for i := 0; i < 25; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := m.Exec(context.Background(), &engine.Command{JobID: "share", StepKey: fmt.Sprint("p", i), Host: h, Cmd: "sleep 0.3"})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("25 sessions of 0.3s took %v: more than 10 ran at once on one connection", d)
	}
	if mt := m.Metrics(); mt.Handshakes != 1 || mt.SessionsOpen != 0 || mt.Waiting != 0 {
		t.Errorf("after 25 concurrent Execs: %+v, want still 1 handshake", mt)
	}
}

func TestPerHostCapFIFO(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, func(o *remote.Options) { o.MaxSessionsPerConn = 1 })
	h := engineHost(s, s.Hosts[0])
	order := filepath.Join(s.UserDir, "order")

	hold := make(chan error, 1)
	go func() {
		_, err := m.Exec(context.Background(), &engine.Command{JobID: "fifo", StepKey: "hold", Host: h, Cmd: "sleep 0.5"})
		hold <- err
	}()
	eventually(t, 5*time.Second, "the first session", func() bool { return m.Metrics().SessionsOpen == 1 })

	const n = 8
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			execOK(t, m, &engine.Command{JobID: "fifo", StepKey: fmt.Sprint(i), Host: h, Cmd: fmt.Sprintf("echo %d >> %s", i, order)})
		}()
		// Arrival order is the order the requests queue in.
		eventually(t, time.Second, "request to queue", func() bool { return m.Metrics().Waiting == int64(i+1) })
	}
	wg.Wait()
	if err := <-hold; err != nil {
		t.Fatal(err)
	}
	want := []string{"0", "1", "2", "3", "4", "5", "6", "7"}
	if got := readLines(t, order); !reflect.DeepEqual(got, want) {
		t.Errorf("queued requests ran in order %v, want arrival order %v", got, want)
	}
	if mt := m.Metrics(); mt.Handshakes != 1 {
		t.Errorf("handshakes = %d, want 1 (MaxConnsPerHost 1)", mt.Handshakes)
	}
}

func TestConnsPerHost(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, func(o *remote.Options) { o.MaxSessionsPerConn = 1; o.MaxConnsPerHost = 2 })
	h := engineHost(s, s.Hosts[0])
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			execOK(t, m, &engine.Command{JobID: "cph", StepKey: fmt.Sprint(i), Host: h, Cmd: "sleep 0.3"})
		}()
	}
	wg.Wait()
	if d := time.Since(start); d < 600*time.Millisecond {
		t.Errorf("4 commands of 0.3s on 2 single-session connections took %v", d)
	}
	if mt := m.Metrics(); mt.Handshakes != 2 || mt.ConnsOpen != 2 {
		t.Errorf("metrics %+v, want 2 connections", mt)
	}
}

func TestHandshakeCapFIFO(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 6)
	// Slow links make each handshake last long enough to see overlap.
	var hosts []engine.Host
	for _, h := range s.Hosts {
		hosts = append(hosts, engineHost(s, s.SlowHost(h, 15*time.Millisecond)))
	}

	logs, withLogs := recordLogs(t)
	m := newManager(t, s, func(o *remote.Options) { o.MaxHandshakes = 1; withLogs(o) })
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			execOK(t, m, &engine.Command{JobID: "hs", StepKey: "1", Host: h, Cmd: "true"})
		}()
		eventually(t, 5*time.Second, "request to arrive", func() bool {
			mt := m.Metrics()
			return mt.Waiting+mt.Handshakes >= int64(i+1)
		})
	}
	wg.Wait()
	mt := m.Metrics()
	if mt.MaxHandshakesInFlight != 1 || mt.Handshakes != 6 {
		t.Errorf("metrics %+v: want 6 handshakes, one at a time", mt)
	}
	var order []string
	for _, l := range logs.matching("msg=connecting") {
		f := strings.Fields(l[strings.Index(l, "host="):])
		order = append(order, strings.TrimPrefix(f[0], "host="))
	}
	want := []string{"h1-slow", "h2-slow", "h3-slow", "h4-slow", "h5-slow", "h6-slow"}
	if !reflect.DeepEqual(order, want) {
		t.Errorf("hosts connected in order %v, want arrival order %v", order, want)
	}

	m3 := newManager(t, s, func(o *remote.Options) { o.MaxHandshakes = 3 })
	for i, h := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			execOK(t, m3, &engine.Command{JobID: "hs3", StepKey: fmt.Sprint(i), Host: h, Cmd: "true"})
		}()
	}
	wg.Wait()
	if mt := m3.Metrics(); mt.MaxHandshakesInFlight != 3 {
		t.Errorf("MaxHandshakes 3: at most %d handshakes ran at once, want 3", mt.MaxHandshakesInFlight)
	}
}

func TestIdleSweep(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	const sweep = 100 * time.Millisecond
	m := newManager(t, s, func(o *remote.Options) { o.SweepInterval = sweep })
	h := engineHost(s, s.Hosts[0])

	// A busy connection outlives many sweeps.
	execOK(t, m, &engine.Command{JobID: "idle", StepKey: "1", Host: h, Cmd: "sleep 0.5"})
	idleFrom := time.Now()
	if mt := m.Metrics(); mt.ConnsOpen != 1 || mt.Handshakes != 1 {
		t.Fatalf("after a 0.5s command with 0.1s sweeps: %+v", mt)
	}
	eventually(t, 3*time.Second, "the idle connection to close", func() bool { return m.Metrics().ConnsOpen == 0 })
	if d := time.Since(idleFrom); d < sweep {
		t.Errorf("idle connection closed after %v, before two sweeps", d)
	}
	execOK(t, m, &engine.Command{JobID: "idle", StepKey: "2", Host: h, Cmd: "true"})
	if mt := m.Metrics(); mt.Handshakes != 2 || mt.ConnsOpen != 1 {
		t.Errorf("after the idle close, a new call dials again: %+v", mt)
	}
}

func TestRedialAfterConnectionKilled(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	h := engineHost(s, s.Hosts[0])
	execOK(t, m, &engine.Command{JobID: "redial", StepKey: "1", Host: h, Cmd: "true"})
	if s.DropConnections(s.Hosts[0]) == 0 {
		t.Fatal("no connection to drop")
	}
	res := execOK(t, m, &engine.Command{JobID: "redial", StepKey: "2", Host: h, Cmd: "echo back"})
	if res.Stdout != "back\n" {
		t.Errorf("stdout %q", res.Stdout)
	}
	if mt := m.Metrics(); mt.Handshakes != 2 || mt.ConnsOpen != 1 {
		t.Errorf("metrics %+v, want a second handshake", mt)
	}
}

func TestKeepaliveDetectsDeadLink(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	link := s.SlowHost(s.Hosts[0], 0)
	m := newManager(t, s, func(o *remote.Options) { o.KeepaliveInterval = 100 * time.Millisecond })
	execOK(t, m, &engine.Command{JobID: "ka", StepKey: "1", Host: engineHost(s, link), Cmd: "true"})
	if mt := m.Metrics(); mt.ConnsOpen != 1 {
		t.Fatalf("metrics %+v", mt)
	}
	s.Freeze(link)
	// No FIN, no RST: only the unanswered keepalive shows the link dead.
	eventually(t, 3*time.Second, "the dead connection to be dropped", func() bool { return m.Metrics().ConnsOpen == 0 })
	execOK(t, m, &engine.Command{JobID: "ka", StepKey: "2", Host: engineHost(s, s.Hosts[0]), Cmd: "true"})
}

func TestReattachAfterConnectionDrop(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	runAcross(t, s, m, "drop", "1", "a dropped connection", func() bool { return s.DropConnections(s.Hosts[0]) > 0 })
	if mt := m.Metrics(); mt.Handshakes != 2 || mt.Reattached != 1 {
		t.Errorf("metrics %+v, want 2 handshakes and 1 re-attach", mt)
	}
}

// runAcross runs a marked command of job on s's first host, calls
// disrupt (which reports whether it found something to disrupt) once the
// command started, and checks that the call still returned the
// command's whole output and that the command ran once.
func runAcross(t *testing.T, s *sshtest.Server, m *remote.Manager, job, sleep, what string, disrupt func() bool) {
	t.Helper()
	marker := filepath.Join(s.UserDir, job+"-marker")
	done := make(chan struct{})
	var res *engine.CommandResult
	var err error
	go func() {
		defer close(done)
		res, err = m.Exec(context.Background(), &engine.Command{JobID: job, StepKey: "1", Host: engineHost(s, s.Hosts[0]),
			Cmd: fmt.Sprintf("echo before; touch %s.started; sleep %s; echo done >> %s; echo after", marker, sleep, marker)})
	}()
	eventually(t, 5*time.Second, "the command to start", func() bool { return fileExists(marker + ".started") })
	if !disrupt() {
		t.Fatalf("nothing to disrupt for %s", what)
	}
	<-done
	if err != nil {
		t.Fatalf("Exec across %s: %v", what, err)
	}
	if res.Stdout != "before\nafter\n" || res.Code != 0 {
		t.Errorf("stdout %q code %d", res.Stdout, res.Code)
	}
	if got := readLines(t, marker); len(got) != 1 {
		t.Errorf("marker has %d lines, want 1: the command ran again", len(got))
	}
}

func TestConnectionDropNoReturn(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, func(o *remote.Options) { o.ConnectRetries = 1 })
	h := engineHost(s, s.Hosts[0])
	errc := make(chan error, 1)
	go func() {
		_, err := m.Exec(context.Background(), &engine.Command{JobID: "gone", StepKey: "1", Host: h,
			Cmd: fmt.Sprintf("touch %s/gone; sleep 5", s.UserDir)})
		errc <- err
	}()
	eventually(t, 5*time.Second, "the command to start", func() bool { return fileExists(s.UserDir + "/gone") })
	s.Stop(s.Hosts[0])
	err := <-errc
	if !errors.Is(err, remote.ErrConnectionDropped) {
		t.Fatalf("err = %v, want a dropped connection", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "host h1") || !strings.Contains(msg, "re-attaches") {
		t.Errorf("error does not name the host and what to do: %s", msg)
	}
	for _, p := range pgrep("^sleep 5$") {
		if pid, err := strconv.Atoi(p); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// TestReattachAfterControllerCrash is the supervised command's purpose:
// the controller dies mid-command, the resumed job's Exec for the same
// step re-attaches to it instead of running it again.
func TestReattachAfterControllerCrash(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	h := engineHost(s, s.Hosts[0])

	t.Run("still running", func(t *testing.T) {
		marker := filepath.Join(s.UserDir, "running")
		started := filepath.Join(s.UserDir, "running.started")
		cmd := &engine.Command{JobID: "crash", StepKey: "4/b2/1", Host: h,
			Cmd: fmt.Sprintf("touch %s; echo started; sleep 2; echo done >> %s; echo finished", started, marker)}
		m1 := newManager(t, s, nil)
		errc := make(chan error, 1)
		go func() {
			_, err := m1.Exec(context.Background(), cmd)
			errc <- err
		}()
		eventually(t, 5*time.Second, "the command to start", func() bool { return fileExists(started) })
		m1.Detach() // the controller dies: no cleanup reaches the host
		if err := <-errc; !errors.Is(err, remote.ErrDetached) {
			t.Fatalf("Exec on a detached manager: %v", err)
		}
		if got := readLines(t, marker); len(got) != 0 {
			t.Fatalf("command finished too early: %v", got)
		}

		m2 := newManager(t, s, nil)
		res := execOK(t, m2, cmd)
		if res.Stdout != "started\nfinished\n" {
			t.Errorf("stdout %q", res.Stdout)
		}
		if got := readLines(t, marker); len(got) != 1 {
			t.Errorf("marker has %d lines, want 1", len(got))
		}
		if mt := m2.Metrics(); mt.Reattached != 1 {
			t.Errorf("metrics %+v, want 1 re-attach", mt)
		}
	})

	t.Run("finished meanwhile", func(t *testing.T) {
		marker := filepath.Join(s.UserDir, "finished")
		started := filepath.Join(s.UserDir, "finished.started")
		cmd := &engine.Command{JobID: "crash", StepKey: "7", Host: h,
			Cmd: fmt.Sprintf("touch %s; sleep 0.5; echo done >> %s; echo result; exit 3", started, marker)}
		m1 := newManager(t, s, nil)
		errc := make(chan error, 1)
		go func() {
			_, err := m1.Exec(context.Background(), cmd)
			errc <- err
		}()
		eventually(t, 5*time.Second, "the command to start", func() bool { return fileExists(started) })
		m1.Detach()
		<-errc
		eventually(t, 5*time.Second, "the command to finish", func() bool { return len(readLines(t, marker)) == 1 })

		m2 := newManager(t, s, nil)
		res := execOK(t, m2, cmd)
		if res.Stdout != "result\n" || res.Code != 3 {
			t.Errorf("collected stdout %q code %d", res.Stdout, res.Code)
		}
		if got := readLines(t, marker); len(got) != 1 {
			t.Errorf("marker has %d lines, want 1", len(got))
		}
		if mt := m2.Metrics(); mt.Collected != 1 {
			t.Errorf("metrics %+v, want 1 collected", mt)
		}

		// Running the step again in the same process is a retry: it runs.
		execOK(t, m2, cmd)
		if got := readLines(t, marker); len(got) != 2 {
			t.Errorf("retry: marker has %d lines, want 2", len(got))
		}
	})
}

// pgrep lists the processes whose command line matches pattern, from
// /proc (the hosts are this machine), like pgrep -f.
func pgrep(pattern string) []string {
	re := regexp.MustCompile(pattern)
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if re.MatchString(strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))) {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestCancelKillsProcessGroup(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, func(o *remote.Options) { o.KillGrace = 300 * time.Millisecond })
	h := engineHost(s, s.Hosts[0])
	// Distinct durations make the processes findable; the second ignores
	// SIGTERM, so only SIGKILL after the grace period ends it.
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1000000)
	cmd := &engine.Command{JobID: "cancel", StepKey: "1", Host: h,
		Cmd: fmt.Sprintf("sleep 37.%s & sh -c \"trap '' TERM; sleep 38.%s\" & wait", tag, tag)}

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := m.Exec(ctx, cmd)
		errc <- err
	}()
	eventually(t, 5*time.Second, "both processes to run", func() bool {
		return len(pgrep("^sleep 37."+tag)) == 1 && len(pgrep("^sleep 38."+tag)) == 1
	})
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Exec did not return after cancel")
	}
	if p := append(pgrep("^sleep 37."+tag), pgrep("^sleep 38."+tag)...); len(p) != 0 {
		t.Errorf("processes left running on the host: %v", p)
	}

	// A timeout is the same, and the next attempt of the step runs anew.
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := m.Exec(ctx, &engine.Command{JobID: "cancel", StepKey: "2", Host: h, Cmd: "sleep 39." + tag})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if p := pgrep("^sleep 39." + tag); len(p) != 0 {
		t.Errorf("timed-out command still running: %v", p)
	}
	res := execOK(t, m, &engine.Command{JobID: "cancel", StepKey: "2", Host: h, Cmd: "echo again"})
	if res.Stdout != "again\n" {
		t.Errorf("retry after timeout: %q", res.Stdout)
	}
}

func TestCloseKillsCommands(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1000000)
	errc := make(chan error, 1)
	go func() {
		_, err := m.Exec(context.Background(), &engine.Command{JobID: "close", StepKey: "1", Host: engineHost(s, s.Hosts[0]), Cmd: "sleep 41." + tag})
		errc <- err
	}()
	eventually(t, 5*time.Second, "the command to run", func() bool { return len(pgrep("^sleep 41."+tag)) == 1 })
	m.Close()
	if err := <-errc; !errors.Is(err, remote.ErrClosed) {
		t.Errorf("err = %v, want ErrClosed", err)
	}
	if p := pgrep("^sleep 41." + tag); len(p) != 0 {
		t.Errorf("Close left the command running: %v", p)
	}
	if mt := m.Metrics(); mt.ConnsOpen != 0 || mt.SessionsOpen != 0 {
		t.Errorf("after Close: %+v", mt)
	}
	if _, err := m.Exec(context.Background(), &engine.Command{JobID: "close", StepKey: "2", Host: engineHost(s, s.Hosts[0]), Cmd: "true"}); !errors.Is(err, remote.ErrClosed) {
		t.Errorf("Exec after Close: %v", err)
	}
}

func TestForget(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	// The default place, in the login's home.
	m := newManager(t, s, func(o *remote.Options) { o.RunDir = "" })
	h := engineHost(s, s.Hosts[0])
	job := fmt.Sprintf("forget-%d", time.Now().UnixNano())
	execOK(t, m, &engine.Command{JobID: job, StepKey: "1", Host: h, Cmd: "true"})
	dir := filepath.Join(defaultRunDir(s), job)
	if _, err := os.Stat(filepath.Join(dir, "1", "rc")); err != nil {
		t.Fatalf("step directory: %v", err)
	}
	if err := m.Forget(context.Background(), h, job); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("job directory still there: %v", err)
	}
}
