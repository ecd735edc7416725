// Package clustertest runs several drover server processes on one
// PostgreSQL database, as SPEC section 7 describes them: real processes,
// a real database, kill -9.
//
// The tests need a PostgreSQL server on which the user may create
// databases: DROVER_TEST_POSTGRES names it (a URL of any database there),
// by default the local server with trust authentication. Without one the
// tests skip, unless DROVER_REQUIRE_POSTGRES=1 (CI), when they fail.
package clustertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/drover/drover/internal/pgtest"
	"github.com/drover/drover/internal/proctest"
)

const defaultTestURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

func testURL() string {
	if u := os.Getenv("DROVER_TEST_POSTGRES"); u != "" {
		return u
	}
	return defaultTestURL
}

// droverBin is the drover binary TestMain builds.
var droverBin string

func TestMain(m *testing.M) {
	os.Exit(proctest.Main(m, &droverBin))
}

// adminConn connects to the test server's maintenance database, skipping
// (or failing, when required) the test if there is no server.
func adminConn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, testURL())
	if err != nil {
		msg := fmt.Sprintf("no PostgreSQL at %s: %v", redact(testURL()), err)
		if os.Getenv("DROVER_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("%s (DROVER_REQUIRE_POSTGRES=1)", msg)
		}
		t.Skipf("%s; set DROVER_TEST_POSTGRES=postgres://user:password@host:port/db to a server where the user may create databases to run these tests", msg)
	}
	return conn
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// freshDB creates an empty database, dropped when the test ends, and
// returns its URL.
func freshDB(t testing.TB) string {
	t.Helper()
	conn := adminConn(t)
	defer conn.Close(context.Background())
	b := make([]byte, 6)
	rand.Read(b)
	name := "drover_cluster_" + hex.EncodeToString(b)
	if _, err := conn.Exec(context.Background(), "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		conn := adminConn(t)
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(testURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// cluster is one database, a token and the servers on it. Workflows write
// their side effects under dir/effects, one file per job.
type cluster struct {
	t       testing.TB
	dir     string
	db      string
	token   string
	lease   string
	persist string // the jobs' persistence policy
	servers []*server
}

type server struct {
	name string
	url  string
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  bytes.Buffer
	done chan struct{}
}

func (s *server) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.Write(p)
}

func (s *server) logs() string { s.mu.Lock(); defer s.mu.Unlock(); return s.log.String() }

func newCluster(t testing.TB) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("cluster test: real processes")
	}
	c := &cluster{t: t, dir: t.TempDir(), lease: "3s", persist: "always"}
	c.db = freshDB(t)
	if err := os.MkdirAll(filepath.Join(c.dir, "effects"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := c.drover("db", "migrate")
	if err != nil {
		t.Fatalf("drover db migrate: %v\n%s", err, out)
	}
	out, err = c.drover("token", "create", "root", "--role", "admin")
	if err != nil {
		t.Fatalf("drover token create: %v\n%s", err, out)
	}
	c.token = strings.TrimSpace(out)
	return c
}

func (c *cluster) env(extra ...string) []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + c.dir, "XDG_DATA_HOME=" + filepath.Join(c.dir, "data"),
		"DROVER_DB=" + c.db, "DROVER_LEASE=" + c.lease, "USER=tester",
	}, extra...)
}

// drover runs a local-mode command on the cluster's database.
func (c *cluster) drover(args ...string) (string, error) {
	cmd := exec.Command(droverBin, args...)
	cmd.Dir = c.dir
	cmd.Env = c.env()
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

// start starts n servers with the given flags and waits until they answer.
func (c *cluster) start(n int, args ...string) {
	c.t.Helper()
	for i := 0; i < n; i++ {
		port := pgtest.FreePort(c.t)
		s := &server{name: fmt.Sprintf("s%d", len(c.servers)+1), url: fmt.Sprintf("http://127.0.0.1:%d", port), done: make(chan struct{})}
		full := append([]string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--log-format", "text"}, args...)
		s.cmd = exec.Command(droverBin, full...)
		s.cmd.Dir = c.dir
		// CLUSTER_SERVER tells the workflows' commands which server ran them.
		s.cmd.Env = c.env("CLUSTER_SERVER=" + s.name)
		s.cmd.Stdout, s.cmd.Stderr = s, s
		if err := s.cmd.Start(); err != nil {
			c.t.Fatal(err)
		}
		go func() { s.cmd.Wait(); close(s.done) }()
		c.t.Cleanup(func() {
			select {
			case <-s.done:
				return
			default:
			}
			s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(10 * time.Second):
				s.cmd.Process.Kill()
				<-s.done
			}
		})
		c.servers = append(c.servers, s)
	}
	for _, s := range c.servers {
		c.waitReady(s)
	}
}

func (c *cluster) waitReady(s *server) {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		res, err := http.Get(s.url + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return
			}
		}
		select {
		case <-s.done:
			c.t.Fatalf("server %s exited:\n%s", s.name, s.logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
	c.t.Fatalf("server %s not ready:\n%s", s.name, s.logs())
}

// pid is the process id of the server named name.
func (c *cluster) pid(name string) int {
	for _, s := range c.servers {
		if s.name == name {
			return s.cmd.Process.Pid
		}
	}
	c.t.Fatalf("no server %s", name)
	return 0
}

// kill kills a server with SIGKILL and waits for it to be gone.
func (c *cluster) kill(s *server) {
	s.cmd.Process.Kill()
	<-s.done
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// call makes an API request to server s and decodes the answer into out.
func (c *cluster) call(s *server, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.url+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, res.Status, data)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// submit creates a job from the workflow text through server s.
func (c *cluster) submit(s *server, wf string, params ...string) string {
	c.t.Helper()
	var out struct {
		Job struct {
			ID string `json:"id"`
		} `json:"job"`
	}
	body := map[string]any{
		"source":  map[string]any{"entry": "wf.star", "files": map[string]string{"wf.star": wf}},
		"params":  append([]string{"dir=" + filepath.Join(c.dir, "effects")}, params...),
		"persist": c.persist,
	}
	if err := c.call(s, "POST", "/api/v1/jobs", body, &out); err != nil {
		c.t.Fatal(err)
	}
	return out.Job.ID
}

// submitMany submits n jobs through the servers in turn from 16 clients
// at once, and returns their ids in submission order.
func (c *cluster) submitMany(n int, wf string, params ...string) []string {
	c.t.Helper()
	ids := make([]string, n)
	errs := make(chan error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				var out struct {
					Job struct {
						ID string `json:"id"`
					} `json:"job"`
				}
				body := map[string]any{
					"source":  map[string]any{"entry": "wf.star", "files": map[string]string{"wf.star": wf}},
					"params":  append([]string{"dir=" + filepath.Join(c.dir, "effects")}, params...),
					"persist": c.persist,
				}
				if err := c.call(c.servers[i%len(c.servers)], "POST", "/api/v1/jobs", body, &out); err != nil {
					errs <- err
					continue
				}
				ids[i] = out.Job.ID
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		c.t.Fatal(err)
	}
	return ids
}

type stepJSON struct {
	Key      string          `json:"key"`
	Activity string          `json:"activity"`
	Status   string          `json:"status"`
	Result   json.RawMessage `json:"result"`
	Attempts int             `json:"attempts"`
	Engine   string          `json:"engine"`
}

type detail struct {
	Job struct {
		ID    string `json:"id"`
		State string `json:"state"`
		Error string `json:"error"`
		Runs  int    `json:"runs"`
		Owner string `json:"owner"`
	} `json:"job"`
	Steps []stepJSON `json:"steps"`
}

func (c *cluster) detail(s *server, id string) detail {
	c.t.Helper()
	var d detail
	if err := c.call(s, "GET", "/api/v1/jobs/"+id, nil, &d); err != nil {
		c.t.Fatal(err)
	}
	return d
}

type listed struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Owner string `json:"owner"`
}

// list lists the top-level jobs, asked of server s.
func (c *cluster) list(s *server) []listed {
	c.t.Helper()
	var all []listed
	after := ""
	for {
		var page struct {
			Jobs []listed `json:"jobs"`
			Next string   `json:"next"`
		}
		if err := c.call(s, "GET", "/api/v1/jobs?limit=5000&after="+after, nil, &page); err != nil {
			c.t.Fatal(err)
		}
		all = append(all, page.Jobs...)
		if page.Next == "" {
			return all
		}
		after = page.Next
	}
}

// states counts the top-level jobs by state, asked of server s.
func (c *cluster) states(s *server) map[string]int {
	c.t.Helper()
	n := map[string]int{}
	for _, j := range c.list(s) {
		n[j.State]++
	}
	return n
}

// waitAll waits until all n jobs are completed, failing on a failed one
// or at the deadline.
func (c *cluster) waitAll(s *server, n int, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := c.states(s)
		if st["failed"] > 0 || st["stopped"] > 0 {
			c.t.Fatalf("jobs ended badly: %v", st)
		}
		if st["completed"] == n {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("after %s: %v, want %d completed", d, st, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// effect is one line a step's command wrote: job, step key, server.
type effect struct {
	job, step, server, nonce string
}

func (e effect) String() string { return e.job + " " + e.step + " " + e.server + " " + e.nonce }

// effects reads every side-effect line, per job in file order.
func (c *cluster) effects() map[string][]effect {
	c.t.Helper()
	dir := filepath.Join(c.dir, "effects")
	ents, err := os.ReadDir(dir)
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string][]effect{}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			c.t.Fatal(err)
		}
		// A line without its newline is being written: read it next time.
		text := string(data)
		if i := strings.LastIndexByte(text, '\n'); i >= 0 {
			text = text[:i]
		} else {
			text = ""
		}
		for _, line := range strings.Split(text, "\n") {
			if line == "" {
				continue
			}
			f := strings.Fields(line)
			if len(f) != 4 {
				c.t.Fatalf("%s: bad line %q", e.Name(), line)
			}
			out[f[0]] = append(out[f[0]], effect{f[0], f[1], f[2], f[3]})
		}
	}
	return out
}

// mark is the shell command a step runs: it appends "JOB STEP SERVER
// NONCE" to the job's effects file and prints the same line, so that the
// journal says which line the committed step wrote.
const mark = `line="$DROVER_JOB $DROVER_STEP $CLUSTER_SERVER $$.$(date +%s%N)"; echo "$line" >> "$D/$DROVER_JOB"; echo "$line"`

// lib is the workflows' common part: mk(dir) runs mark as one step.
const lib = `
def mk(dir, pause=""):
    cmd = ` + "'''" + `D=%s; ` + "'''" + ` % dir
    if pause:
        cmd += "sleep " + pause + "; "
    return sh(cmd + ` + "'''" + mark + "'''" + `).stdout.strip()
`

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
