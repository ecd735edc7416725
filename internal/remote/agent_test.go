package remote_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/remote"
	"github.com/drover/drover/internal/remote/sshtest"
)

// killAgents kills the agent shells serving the manager whose RunDir is
// runDir (and the subshells they forked for a request), as something on
// the host might; the connection stays up. It returns how many died.
func killAgents(runDir string) int {
	n := 0
	for _, p := range pgrep(`(?s)^/bin/sh -c .* drover ` + regexp.QuoteMeta(runDir) + `$`) {
		if pid, err := strconv.Atoi(p); err == nil && syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// Steps on one host share one agent session: the host pays for one
// session per connection, not one per step and another per Forget.
func TestAgentOneSessionForManySteps(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	h := engineHost(s, s.Hosts[0])
	for i := 0; i < 10; i++ {
		res := execOK(t, m, &engine.Command{JobID: "one", StepKey: fmt.Sprint(i), Host: h, Cmd: fmt.Sprintf("echo step %d; echo e%d >&2", i, i)})
		if res.Stdout != fmt.Sprintf("step %d\n", i) || res.Stderr != fmt.Sprintf("e%d\n", i) {
			t.Fatalf("step %d: stdout %q stderr %q", i, res.Stdout, res.Stderr)
		}
	}
	if mt := m.Metrics(); mt.SessionsOpen != 0 || mt.AgentsIdle != 1 {
		t.Errorf("between steps: %d sessions in use, %d idle agents; want 0 and 1", mt.SessionsOpen, mt.AgentsIdle)
	}
	if err := m.Forget(context.Background(), h, "one"); err != nil {
		t.Fatal(err)
	}
	if fileExists(filepath.Join(s.UserDir, "run", "one")) {
		t.Error("Forget left the job directory")
	}
	mt := m.Metrics()
	if mt.SessionsStarted != 1 || mt.AgentsStarted != 1 || mt.AgentRequests != 11 {
		t.Errorf("10 steps and a Forget: %+v, want 1 session and 11 requests", mt)
	}
	// Forget, the job's last call, closes the agent it used.
	eventually(t, 5*time.Second, "the agent to close", func() bool { mt := m.Metrics(); return mt.SessionsOpen == 0 && mt.AgentsIdle == 0 })
}

// A command's stdin is read exactly: the requests after it on the same
// agent arrive intact, whatever the stdin held.
func TestAgentStdinThenMoreRequests(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	h := engineHost(s, s.Hosts[0])

	binary := []byte("no newline at the end \x00\x01\xff 'quote' \"dq\" $HOME\nNONCE\n")
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB: more than a channel window
	for i, in := range [][]byte{binary, big, []byte("x")} {
		res := execOK(t, m, &engine.Command{JobID: "stdin", StepKey: fmt.Sprint("in", i), Host: h, Cmd: "sha256sum | cut -c1-64", Stdin: in})
		if want := fmt.Sprintf("%x\n", sha256.Sum256(in)); res.Stdout != want || res.Code != 0 {
			t.Errorf("stdin %d (%d bytes): sha256 %q, want %q", i, len(in), res.Stdout, want)
		}
		after := execOK(t, m, &engine.Command{JobID: "stdin", StepKey: fmt.Sprint("after", i), Host: h, Cmd: "echo next"})
		if after.Stdout != "next\n" {
			t.Errorf("request after stdin %d: %q", i, after.Stdout)
		}
	}
	if mt := m.Metrics(); mt.SessionsStarted != 1 {
		t.Errorf("sessions started = %d, want 1", mt.SessionsStarted)
	}
}

// An agent killed on the host mid-command (the connection stays) is
// replaced, and the call re-attaches to the command instead of running
// it again.
func TestAgentKilledMidRequest(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	h := engineHost(s, s.Hosts[0])
	// The agent's session ends once the poll's sleep, which holds its
	// output, ends too: well before the command.
	runAcross(t, s, m, "akill", "3", "a killed agent", func() bool { return killAgents(filepath.Join(s.UserDir, "run")) > 0 })
	mt := m.Metrics()
	if mt.Reattached != 1 || mt.AgentsStarted != 2 || mt.Handshakes != 1 {
		t.Errorf("metrics %+v, want 1 re-attach by a second agent on the same connection", mt)
	}

	// An idle agent that died meanwhile is replaced without a trace.
	if killAgents(filepath.Join(s.UserDir, "run")) == 0 {
		t.Fatal("no idle agent to kill")
	}
	time.Sleep(100 * time.Millisecond)
	if r := execOK(t, m, &engine.Command{JobID: "akill", StepKey: "2", Host: h, Cmd: "echo ok"}); r.Stdout != "ok\n" {
		t.Errorf("after the idle agent died: %q", r.Stdout)
	}
	if err := m.Forget(context.Background(), h, "akill"); err != nil {
		t.Fatal(err)
	}
}

// Parallel branches on one host get agents of their own, which later
// calls reuse. Each branch waits until all three have started, so
// branches run one after the other would time out.
func TestAgentConcurrentBranches(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	h := engineHost(s, s.Hosts[0])
	dir := filepath.Join(s.UserDir, "branches")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	s.Chown(dir)
	for round := 0; round < 2; round++ {
		var wg sync.WaitGroup
		for i := 0; i < 3; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := fmt.Sprintf(`touch %[1]s/%[2]d-%[3]d; n=0
while [ ! -e %[1]s/%[2]d-0 ] || [ ! -e %[1]s/%[2]d-1 ] || [ ! -e %[1]s/%[2]d-2 ]; do
	n=$((n+1)); [ $n -gt 200 ] && exit 1; sleep 0.05
done; echo %[3]d`, dir, round, i)
				res := execOK(t, m, &engine.Command{JobID: "branches", StepKey: fmt.Sprint(round, "/", i), Host: h, Cmd: cmd})
				if res.Stdout != fmt.Sprintf("%d\n", i) || res.Code != 0 {
					t.Errorf("round %d branch %d: %q, code %d: the branches did not run at once", round, i, res.Stdout, res.Code)
				}
			}()
		}
		wg.Wait()
	}
	if mt := m.Metrics(); mt.AgentsStarted != 3 || mt.SessionsStarted != 3 || mt.AgentsIdle != 3 {
		t.Errorf("metrics %+v, want 3 agents started once and reused", mt)
	}
}

// With one session per connection, an SFTP copy takes the place of the
// idle agent, and the next command gets a new one.
func TestAgentYieldsToCopy(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, func(o *remote.Options) { o.MaxSessionsPerConn = 1 })
	h := engineHost(s, s.Hosts[0])
	execOK(t, m, &engine.Command{JobID: "yield", StepKey: "1", Host: h, Cmd: "true"})
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(s.UserDir, "yield-copy")
	if _, err := m.Copy(context.Background(), &engine.Transfer{JobID: "yield", StepKey: "2", Host: h, Src: src, Dst: dst}); err != nil {
		t.Fatal(err)
	}
	if r := execOK(t, m, &engine.Command{JobID: "yield", StepKey: "3", Host: h, Cmd: "cat " + dst}); r.Stdout != "data" {
		t.Errorf("after the copy: %q", r.Stdout)
	}
}
