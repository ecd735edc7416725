package remote

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestAgentScriptWithoutGNUHead runs the agent locally where head is not
// GNU's (BusyBox's and BSD's head read ahead through stdio): stdin must
// still be read exactly, or the next request is garbled.
func TestAgentScriptWithoutGNUHead(t *testing.T) {
	// Targets' /bin/sh is dash or bash mostly: try each one here.
	for _, sh := range []string{"/bin/sh", "bash", "busybox", "ksh", "mksh", "zsh"} {
		path, err := exec.LookPath(sh)
		if err != nil {
			continue
		}
		args := []string{"-c"}
		switch sh {
		case "bash":
			args = []string{"--posix", "-c"}
		case "busybox":
			args = []string{"sh", "-c"}
		case "zsh":
			args = []string{"--emulate", "sh", "-c"}
		}
		t.Run(sh, func(t *testing.T) { testAgentScript(t, path, args) })
	}
}

func testAgentScript(t *testing.T, shell string, shArgs []string) {
	bin := t.TempDir()
	fake := "#!/bin/sh\ncase $1 in --version) echo 'BusyBox v1.36'; exit 0 ;; esac\necho 'head must not read the stdin' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(bin, "head"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	run := t.TempDir()
	var req bytes.Buffer
	in := []byte("two\nlines and no end \x00")
	type call struct {
		nonce, op string
		args      []string
		stdin     []byte
	}
	calls := []call{
		{"n1", "X", []string{`echo "$1"; echo to-stderr >&2`, "it's"}, nil},
		{"n2", "L", []string{filepath.Join(run, "job", "1"), "n2", "tok", "0", "0", "0", strconv.Itoa(len(in)), "cat; echo; echo rc"}, in},
		{"n3", "X", []string{`printf '%s|' "$@"`, "a b", "c\nd"}, nil},
		{"n4", "F", []string{filepath.Join(run, "job")}, nil},
	}
	for _, c := range calls {
		req.WriteString(c.nonce + " " + c.op + " " + strconv.Itoa(len(c.stdin)) + "\n")
		for _, a := range c.args {
			req.WriteString(shellQuote(a) + " ")
		}
		req.WriteString("\n" + c.nonce + "\n")
		req.Write(c.stdin)
	}
	cmd := exec.Command(shell, append(shArgs, agentScript, "drover", run)...)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	cmd.Stdin = &req
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("agent: %v\n%s", err, stderr.String())
	}
	want := "n1 S\nit's\nn1 R 0\nn1 Z\n" +
		"n2 S\ntwo\nlines and no end \x00\nrc\nn2 R 0\nn2 Z\n" +
		"n3 S\na b|c\nd|n3 R 0\nn3 Z\n" +
		"n4 S\nn4 R 0\nn4 Z\n"
	if got := stdout.String(); got != want {
		t.Errorf("stdout:\n%q\nwant\n%q", got, want)
	}
	if e := stderr.String(); e != "n1\nto-stderr\nn1\nn2\nn2\nn3\nn3\nn4\nn4\n" {
		t.Errorf("stderr %q", e)
	}
	if _, err := os.Stat(filepath.Join(run, "job")); !os.IsNotExist(err) {
		t.Errorf("F left the job directory: %v", err)
	}
}

// BenchmarkAgentScriptSteps runs supervised `true` steps through a local
// agent, without SSH: what a step costs the host. Under perf stat
// (docs/benchmarks.md) it counts the detached runners too.
func BenchmarkAgentScriptSteps(b *testing.B) {
	run := b.TempDir()
	var req bytes.Buffer
	for i := 0; i < b.N; i++ {
		n := "n" + strconv.Itoa(i)
		req.WriteString(n + " L 0\n")
		for _, a := range []string{filepath.Join(run, "job", strconv.Itoa(i)), n, "tok", "0", "0", "0", "0", "true"} {
			req.WriteString(shellQuote(a) + " ")
		}
		req.WriteString("\n" + n + "\n")
	}
	req.WriteString("f F 0\n" + shellQuote(filepath.Join(run, "job")) + "\nf\n")
	cmd := exec.Command("/bin/sh", "-c", agentScript, "drover", run)
	cmd.Stdin = &req
	var out bytes.Buffer
	cmd.Stdout = &out
	b.ResetTimer()
	if err := cmd.Run(); err != nil {
		b.Fatal(err)
	}
	if got := bytes.Count(out.Bytes(), []byte(" R 0\n")); got != b.N+1 {
		b.Fatalf("%d results for %d steps and a forget:\n%s", got, b.N, out.Bytes())
	}
}
