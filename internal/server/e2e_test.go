package server_test

// End-to-end tests: the drover binary, built once, runs as a server on
// 127.0.0.1 and as its clients, as a user would run them.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/proctest"
)

// droverPath is the drover binary TestMain builds for the end-to-end
// tests.
var droverPath string

func TestMain(m *testing.M) {
	os.Exit(proctest.Main(m, &droverPath))
}

func droverBin(testing.TB) string { return droverPath }

// world is a store, its tokens and, once started, a server on it.
type world struct {
	t      testing.TB
	bin    string
	dir    string
	db     string
	url    string
	tokens map[string]string
	extra  []string // more environment for clients
}

func newWorld(t testing.TB) *world {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	w := &world{t: t, bin: droverBin(t), dir: t.TempDir(), tokens: map[string]string{}}
	w.db = filepath.Join(w.dir, "drover.db")
	return w
}

func (w *world) env() []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + w.dir, "XDG_DATA_HOME=" + filepath.Join(w.dir, "data"),
		"DROVER_DB=" + w.db, "DROVER_LEASE=3s", "USER=tester",
	}, w.extra...)
}

// clientEnv is the environment of user's client commands: client mode
// when a server runs and user is not empty.
func (w *world) clientEnv(user string) []string {
	env := w.env()
	if user != "" && w.url != "" {
		env = append(env, "DROVER_SERVER="+w.url, "DROVER_TOKEN="+w.tokens[user])
	}
	return env
}

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// drover runs a command as user (empty: local mode) and waits for it.
func (w *world) drover(user string, args ...string) result {
	w.t.Helper()
	cmd := exec.Command(w.bin, args...)
	cmd.Dir = w.dir
	cmd.Env = w.clientEnv(user)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		<-done
		w.t.Fatalf("drover %s hung:\n%s\n%s", strings.Join(args, " "), out.String(), errb.String())
	}
	return result{out.String(), errb.String(), cmd.ProcessState.ExitCode()}
}

// must runs a command that must exit 0.
func (w *world) must(user string, args ...string) result {
	w.t.Helper()
	r := w.drover(user, args...)
	if r.code != 0 {
		w.t.Fatalf("drover %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// exits runs a command that must exit with code.
func (w *world) exits(code int, user string, args ...string) result {
	w.t.Helper()
	r := w.drover(user, args...)
	if r.code != code {
		w.t.Fatalf("drover %s: want exit %d, got %s", strings.Join(args, " "), code, r)
	}
	return r
}

func (w *world) write(name, text string) string {
	w.t.Helper()
	p := filepath.Join(w.dir, name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		w.t.Fatal(err)
	}
	return p
}

func (w *world) makeTokens() {
	w.t.Helper()
	for name, role := range map[string]string{"root": "admin", "alice": "operator", "bob": "operator", "val": "viewer"} {
		r := w.must("", "token", "create", name, "--role", role)
		w.tokens[name] = strings.TrimSpace(r.stdout)
	}
}

// proc is a background drover process.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	err  bytes.Buffer
	done chan struct{}
	code int
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (w *world) start(env []string, args ...string) *proc {
	w.t.Helper()
	p := &proc{cmd: exec.Command(w.bin, args...), done: make(chan struct{})}
	p.cmd.Dir = w.dir
	p.cmd.Env = env
	p.cmd.Stdout = lockedWriter{&p.mu, &p.out}
	p.cmd.Stderr = lockedWriter{&p.mu, &p.err}
	if err := p.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	w.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) stdout() string { p.mu.Lock(); defer p.mu.Unlock(); return p.out.String() }
func (p *proc) stderr() string { p.mu.Lock(); defer p.mu.Unlock(); return p.err.String() }

func (p *proc) signal(sig os.Signal) { p.cmd.Process.Signal(sig) }

// wait waits for the process to exit and returns its code.
func (p *proc) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(d):
		t.Fatalf("process did not exit within %s\nstdout:\n%s\nstderr:\n%s", d, p.stdout(), p.stderr())
		return -1
	}
}

// freePort returns a TCP port free on 127.0.0.1 now.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// serve starts drover server on a free port of 127.0.0.1 and waits until
// it answers.
func (w *world) serve(args ...string) *proc {
	w.t.Helper()
	port := freePort(w.t)
	if w.url == "" {
		w.url = fmt.Sprintf("http://127.0.0.1:%d", port)
	} else {
		// A restart keeps the address clients know.
		port = portOf(w.url)
	}
	full := append([]string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--log-format", "text"}, args...)
	p := w.start(w.env(), full...)
	w.waitReady(p)
	return p
}

func portOf(url string) int {
	var port int
	fmt.Sscanf(url[strings.LastIndexByte(url, ':')+1:], "%d", &port)
	return port
}

func (w *world) waitReady(p *proc) {
	w.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		res, err := http.Get(w.url + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return
			}
		}
		select {
		case <-p.done:
			w.t.Fatalf("server exited %d:\n%s", p.code, p.stderr())
		case <-time.After(50 * time.Millisecond):
		}
	}
	w.t.Fatalf("server not ready:\n%s", p.stderr())
}

// jobJSON is what the tests read of drover show --json.
type jobJSON struct {
	Job struct {
		ID        string    `json:"id"`
		Name      string    `json:"name"`
		State     string    `json:"state"`
		CreatedBy string    `json:"created_by"`
		Reason    string    `json:"reason"`
		Runs      int       `json:"runs"`
		Created   time.Time `json:"created"`
		Started   time.Time `json:"started"`
		Ended     time.Time `json:"ended"`
	} `json:"job"`
}

func (w *world) show(user, id string) jobJSON {
	w.t.Helper()
	r := w.must(user, "show", id, "--json")
	var v jobJSON
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		w.t.Fatalf("show --json: %v\n%s", err, r.stdout)
	}
	return v
}

func (w *world) waitState(user, id string, states ...string) jobJSON {
	w.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		v := w.show(user, id)
		for _, s := range states {
			if v.Job.State == s {
				return v
			}
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("job %s is %s, want %v", id, v.Job.State, states)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// httpCall sends a raw API request.
func (w *world) httpCall(token, method, path, ctype string, body []byte) (int, string) {
	w.t.Helper()
	req, err := http.NewRequest(method, w.url+path, bytes.NewReader(body))
	if err != nil {
		w.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer res.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(res.Body)
	return res.StatusCode, b.String()
}

const approvalWF = `
def main(n=3):
    for i in range(n):
        print("step", i)
        emit("line %d" % i)
        sh("sleep 0.2")
        progress(i + 1, n)
    v = wait("go", timeout="1h")
    emit(v["ok"])
    return n
`

const loopWF = `
def main(n=20, pause="0.2"):
    for i in range(n):
        sh("sleep " + pause)
        emit("line %d" % i)
    return n
`

var idRE = regexp.MustCompile(`^[0-9a-z]{8,20}$`)

func TestE2EClientMode(t *testing.T) {
	w := newWorld(t)
	w.makeTokens()
	w.write("approval.star", approvalWF)
	w.write("loop.star", loopWF)
	w.write("fails.star", "def main():\n    sh(\"echo broken >&2; exit 3\")\n")
	w.write("hello.star", "def main(who=\"world\"):\n    print(\"greeting\", who)\n    progress(1, 2, \"half\")\n    sh(\"echo from sh\")\n    emit(\"hello \" + who)\n    emit({\"who\": who, \"n\": [1, 2]})\n    progress(2, 2)\n")

	// Without a server, --detach is a usage error that says what it needs.
	r := w.exits(2, "", "run", "hello.star", "--detach")
	if !strings.Contains(r.stderr, "--server") {
		t.Errorf("local --detach: %s", r)
	}

	srv := w.serve("--max-running", "4")

	// run --detach prints the id at once.
	start := time.Now()
	r = w.must("alice", "run", "approval.star", "--detach", "--name", "approval")
	id := strings.TrimSpace(r.stdout)
	if !idRE.MatchString(id) || time.Since(start) > 5*time.Second {
		t.Fatalf("run --detach printed %q after %s", r.stdout, time.Since(start))
	}
	// Follow its output from another "shell" while it runs and waits.
	follower := w.start(w.clientEnv("alice"), "output", id, "--follow")
	w.waitState("alice", id, "waiting")
	if code := follower.wait(t, 20*time.Second); code != 0 || follower.stdout() != "line 0\nline 1\nline 2\n" {
		t.Errorf("output --follow: exit %d\n%s\n%s", code, follower.stdout(), follower.stderr())
	}
	r = w.must("alice", "jobs")
	if !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "waiting") || !strings.Contains(r.stdout, "3/3 (100%)") {
		t.Errorf("jobs:\n%s", r.stdout)
	}
	r = w.must("alice", "show", id)
	for _, want := range []string{"Created by:  alice", "Waiting for: signal go", "wait"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("show lacks %q:\n%s", want, r.stdout)
		}
	}
	// Nothing of alice's job reaches bob; the viewer reads and may not act.
	if r := w.exits(1, "bob", "show", id); !strings.Contains(r.stderr, "no job") {
		t.Errorf("bob shows alice's job: %s", r)
	}
	if r := w.must("bob", "jobs"); strings.Contains(r.stdout, id) {
		t.Errorf("bob lists alice's job:\n%s", r.stdout)
	}
	w.exits(1, "bob", "signal", id, "go", `{"ok": "bob"}`)
	w.exits(1, "bob", "logs", id)
	w.must("val", "show", id)
	if r := w.exits(1, "val", "signal", id, "go", `{"ok": "val"}`); !strings.Contains(r.stderr, "needs the operator role") {
		t.Errorf("viewer signals: %s", r)
	}
	// Signal it; the server continues it.
	r = w.must("alice", "signal", id, "go", `{"ok": "approved"}`)
	if !strings.Contains(r.stdout, "delivered signal go to job "+id) {
		t.Errorf("signal: %s", r)
	}
	w.must("alice", "wait", id)
	if r := w.must("alice", "output", id); r.stdout != "line 0\nline 1\nline 2\napproved\n" {
		t.Errorf("output after the signal:\n%s", r.stdout)
	}
	if r := w.must("alice", "logs", id); r.stdout != "step 0\nstep 1\nstep 2\n" {
		t.Errorf("logs:\n%s", r.stdout)
	}

	// Foreground runs through the server exit as local ones do, and print
	// the same.
	remote := w.drover("alice", "run", "hello.star", "-p", "who=you")
	local := w.drover("", "--db", filepath.Join(w.dir, "local.db"), "run", "hello.star", "-p", "who=you")
	if remote.code != 0 || remote.stdout != local.stdout || remote.stderr != local.stderr {
		t.Errorf("client mode and local mode differ:\nclient: %s\nlocal: %s", remote, local)
	}
	remote = w.drover("alice", "run", "hello.star", "-v")
	local = w.drover("", "--db", filepath.Join(w.dir, "local.db"), "run", "hello.star", "-v")
	if remote.stdout != local.stdout || remote.stderr != local.stderr {
		t.Errorf("client mode and local mode differ with -v:\nclient: %s\nlocal: %s", remote, local)
	}
	r = w.exits(1, "alice", "run", "fails.star")
	if !strings.Contains(r.stderr, "failed") || !strings.Contains(r.stderr, "fails.star:2") {
		t.Errorf("failing run: %s", r)
	}
	r = w.exits(3, "alice", "run", "approval.star", "-p", "n=1")
	if !strings.Contains(r.stderr, "is waiting for signal go") || r.stdout != "line 0\n" {
		t.Errorf("waiting run: %s", r)
	}
	w.exits(2, "alice", "run", "hello.star", "-p", "nope=1")
	w.write("bad.star", "def main():\n    x = \n")
	if r := w.exits(2, "alice", "run", "bad.star"); !strings.Contains(r.stderr, "bad.star:2:9") {
		t.Errorf("syntax error: %s", r)
	}

	// Suspend, resume (followed to its end), stop, rm.
	r = w.must("alice", "run", "loop.star", "--detach", "-p", "n=15")
	lid := strings.TrimSpace(r.stdout)
	w.waitState("alice", lid, "running")
	if r := w.must("alice", "suspend", lid); !strings.Contains(r.stdout, "job "+lid+" suspended") {
		t.Errorf("suspend: %s", r)
	}
	before := w.must("alice", "output", lid).stdout
	r = w.must("alice", "resume", lid)
	if !strings.HasSuffix(before+r.stdout, "line 14\n") || strings.Count(before+r.stdout, "\n") != 15 {
		t.Errorf("resume printed again or lost lines:\nbefore:\n%s\nresume: %s", before, r)
	}
	r = w.must("alice", "run", "loop.star", "--detach", "-p", "n=100")
	sid := strings.TrimSpace(r.stdout)
	w.waitState("alice", sid, "running")
	if r := w.exits(1, "alice", "rm", sid); !strings.Contains(r.stderr, "is running; stop it first") {
		t.Errorf("rm a running job: %s", r)
	}
	if r := w.must("alice", "stop", sid); !strings.Contains(r.stdout, "job "+sid+" stopped") {
		t.Errorf("stop: %s", r)
	}
	if r := w.must("alice", "rm", sid); !strings.Contains(r.stdout, "removed job "+sid) {
		t.Errorf("rm: %s", r)
	}
	w.exits(1, "alice", "show", sid)

	// Workflows: admins register them; operators run them by name.
	if r := w.exits(1, "alice", "workflow", "add", "hello", "hello.star"); !strings.Contains(r.stderr, "admin") {
		t.Errorf("operator adds a workflow: %s", r)
	}
	w.must("root", "workflow", "add", "hello", "hello.star")
	if r := w.must("val", "workflow", "list"); !strings.Contains(r.stdout, "hello") {
		t.Errorf("workflow list: %s", r)
	}
	if r := w.must("val", "workflow", "show", "hello"); !strings.Contains(r.stdout, `main(who="world")`) {
		t.Errorf("workflow show: %s", r)
	}
	if r := w.must("alice", "run", "hello", "-p", "who=wf"); !strings.Contains(r.stdout, "hello wf") {
		t.Errorf("run a registered workflow: %s", r)
	}
	w.must("root", "workflow", "rm", "hello")

	// Refused calls, over HTTP.
	for _, c := range []struct {
		token, method, path, ctype, body string
		status                           int
	}{
		{"", "GET", "/api/v1/jobs", "", "", 401},
		{"nope", "GET", "/api/v1/jobs", "", "", 401},
		{w.tokens["val"], "POST", "/api/v1/jobs", "application/json", `{"workflow": "x"}`, 403},
		{w.tokens["bob"], "GET", "/api/v1/jobs/" + id, "", "", 404},
		{w.tokens["alice"], "POST", "/api/v1/jobs", "application/json", `{"source": `, 400},
		{w.tokens["alice"], "POST", "/api/v1/jobs", "application/json", `{"sauce": {}}`, 400},
		{w.tokens["alice"], "POST", "/api/v1/jobs", "application/json", `{"name": "` + strings.Repeat("x", 9<<20) + `"}`, 413},
	} {
		status, body := w.httpCall(c.token, c.method, c.path, c.ctype, []byte(c.body))
		var e struct {
			Error string `json:"error"`
		}
		if status != c.status || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("%s %s: %d %.200s, want %d with a JSON error", c.method, c.path, status, body, c.status)
		}
	}
	// The server still serves after all that.
	w.must("alice", "jobs")
	srv.signal(syscall.SIGTERM)
	if code := srv.wait(t, 40*time.Second); code != 0 {
		t.Errorf("server exit %d:\n%s", code, srv.stderr())
	}
}

// TestE2EFollowReattach: a follower stopped mid-stream and re-attached
// after the last record it printed loses and repeats nothing.
func TestE2EFollowReattach(t *testing.T) {
	w := newWorld(t)
	w.makeTokens()
	w.write("loop.star", loopWF)
	w.serve()
	id := strings.TrimSpace(w.must("alice", "run", "loop.star", "--detach", "-p", "n=20", "-p", "pause=0.15").stdout)
	f1 := w.start(w.clientEnv("alice"), "output", id, "--follow", "--json")
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(f1.stdout(), "\n") < 5 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	f1.signal(os.Interrupt)
	f1.wait(t, 10*time.Second)
	var seen []string
	var last int64
	for _, line := range strings.Split(strings.TrimSpace(f1.stdout()), "\n") {
		var rec struct {
			Seq   int64  `json:"seq"`
			Value string `json:"value"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("output --json line %q: %v", line, err)
		}
		seen = append(seen, rec.Value)
		last = rec.Seq
	}
	r := w.must("alice", "output", id, "--follow", "--after", fmt.Sprint(last))
	all := strings.Join(seen, "\n") + "\n" + r.stdout
	var want strings.Builder
	for i := range 20 {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	if all != want.String() {
		t.Errorf("first follower then the re-attached one:\n%s", all)
	}
}

// TestE2ERestart: a server stopped with SIGTERM, or killed, and started
// again resumes every job that was queued, running or due; a follower
// rides through the restart without losing or repeating a line.
func TestE2ERestart(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			w := newWorld(t)
			w.makeTokens()
			w.write("loop.star", loopWF)
			srv := w.serve("--max-running", "1")
			id := strings.TrimSpace(w.must("alice", "run", "loop.star", "--detach", "-p", "n=12", "-p", "pause=0.3").stdout)
			queued := strings.TrimSpace(w.must("alice", "run", "loop.star", "--detach", "-p", "n=2", "-p", "pause=0.1").stdout)
			follower := w.start(w.clientEnv("alice"), "output", id, "--follow")
			deadline := time.Now().Add(30 * time.Second)
			for strings.Count(follower.stdout(), "\n") < 3 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			srv.signal(sig)
			code := srv.wait(t, 40*time.Second)
			if sig == syscall.SIGTERM && code != 0 {
				t.Fatalf("server exit %d after SIGTERM:\n%s", code, srv.stderr())
			}
			st := w.show("", id) // local mode: straight from the store
			switch sig {
			case syscall.SIGTERM:
				if st.Job.State != "queued" || !strings.Contains(st.Job.Reason, "shutdown") {
					t.Errorf("after SIGTERM the job is %s (%s)", st.Job.State, st.Job.Reason)
				}
			case syscall.SIGKILL:
				if st.Job.State != "interrupted" {
					t.Errorf("after kill -9 the job is %s", st.Job.State)
				}
			}
			w.serve("--max-running", "1")
			if code := follower.wait(t, 60*time.Second); code != 0 {
				t.Errorf("follower exit %d:\n%s", code, follower.stderr())
			}
			var want strings.Builder
			for i := range 12 {
				fmt.Fprintf(&want, "line %d\n", i)
			}
			if follower.stdout() != want.String() {
				t.Errorf("the follower printed:\n%s\nstderr:\n%s", follower.stdout(), follower.stderr())
			}
			if v := w.waitState("alice", id, "completed"); v.Job.Runs < 2 {
				t.Errorf("the job ran %d times", v.Job.Runs)
			}
			w.waitState("alice", queued, "completed")
		})
	}
}

// TestE2ETimerAcrossRestart: a job sleeping on a durable timer when the
// server stops is woken by the next server.
func TestE2ETimerAcrossRestart(t *testing.T) {
	w := newWorld(t)
	w.makeTokens()
	w.write("nap.star", "def main():\n    emit(\"sleeping\")\n    sleep(\"7s\")\n    emit(\"woke\")\n")
	srv := w.serve()
	id := strings.TrimSpace(w.must("alice", "run", "nap.star", "--detach").stdout)
	w.waitState("alice", id, "waiting")
	srv.signal(syscall.SIGTERM)
	srv.wait(t, 30*time.Second)
	time.Sleep(8 * time.Second) // the timer is due while no server runs
	w.serve()
	w.waitState("alice", id, "completed")
	if r := w.must("alice", "output", id); r.stdout != "sleeping\nwoke\n" {
		t.Errorf("output: %s", r.stdout)
	}
}

// TestE2EThrottle: --max-running caps the jobs running at once; the rest
// wait queued and start in submission order.
func TestE2EThrottle(t *testing.T) {
	w := newWorld(t)
	w.makeTokens()
	w.write("loop.star", loopWF)
	w.serve("--max-running", "2")
	var ids []string
	for i := range 6 {
		r := w.must("alice", "run", "loop.star", "--detach", "-p", "n=2", "-p", "pause=0.3", "--name", fmt.Sprintf("t%d", i))
		ids = append(ids, strings.TrimSpace(r.stdout))
	}
	maxRunning := 0
	for {
		r := w.must("alice", "jobs", "--json")
		var jobs []struct {
			ID, State string
		}
		json.Unmarshal([]byte(r.stdout), &jobs)
		running, done := 0, 0
		for _, j := range jobs {
			switch j.State {
			case "running":
				running++
			case "completed":
				done++
			}
		}
		maxRunning = max(maxRunning, running)
		if done == len(ids) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if maxRunning > 2 || maxRunning == 0 {
		t.Errorf("at most %d jobs ran at once, want 2", maxRunning)
	}
	var starts []time.Time
	for _, id := range ids {
		starts = append(starts, w.show("alice", id).Job.Started)
	}
	for i := 1; i < len(starts); i++ {
		if starts[i].Before(starts[i-1]) {
			t.Errorf("job %d started at %s, before job %d at %s", i, starts[i], i-1, starts[i-1])
		}
	}
}

// TestE2ETLSAndRefusals: the server refuses a non-loopback address without
// TLS, and serves HTTPS to clients that trust its authority.
func TestE2ETLSAndRefusals(t *testing.T) {
	w := newWorld(t)
	w.makeTokens()
	port := freePort(t)
	r := w.exits(2, "", "server", "--listen", fmt.Sprintf("0.0.0.0:%d", port))
	if !strings.Contains(r.stderr, "without TLS") {
		t.Errorf("non-loopback without TLS: %s", r)
	}
	r = w.exits(2, "", "server", "--listen", fmt.Sprintf("0.0.0.0:%d", port), "--insecure-no-auth", "--tls-cert", "x", "--tls-key", "y")
	if !strings.Contains(r.stderr, "without auth") {
		t.Errorf("non-loopback without auth: %s", r)
	}
	w.exits(2, "", "server", "--tls-cert", "only-cert.pem")

	cert, key := w.selfSigned()
	p := w.start(w.env(), "server", "--listen", fmt.Sprintf("0.0.0.0:%d", port), "--tls-cert", cert, "--tls-key", key)
	w.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	w.extra = []string{"DROVER_CA=" + cert}
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := w.drover("alice", "jobs")
		if r.code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("jobs over TLS: %s\nserver:\n%s", r, p.stderr())
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.write("hello.star", "def main():\n    emit(\"over tls\")\n")
	if r := w.must("alice", "run", "hello.star"); r.stdout != "over tls\n" {
		t.Errorf("run over TLS: %s", r)
	}
	// Without the authority the client refuses the certificate.
	w.extra = nil
	if r := w.drover("alice", "jobs"); r.code == 0 || !strings.Contains(r.stderr, "certificate") {
		t.Errorf("a client that does not trust the certificate: %s", r)
	}
	p.signal(syscall.SIGTERM)
	p.wait(t, 30*time.Second)
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func (w *world) selfSigned() (certFile, keyFile string) {
	w.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		w.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "drover test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		w.t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		w.t.Fatal(err)
	}
	certFile = w.write("cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = w.write("key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})))
	return certFile, keyFile
}

var _ = errors.New
