package main

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	_ "modernc.org/sqlite"
)

// pollTimeout bounds every wait of the commands below: long enough for a
// loaded 2-core machine, short enough that a hang fails the script.
const pollTimeout = 30 * time.Second

// scriptCmds are the custom commands of the drover scripts.
var scriptCmds = map[string]func(ts *testscript.TestScript, neg bool, args []string){
	// exits CODE PROG [ARGS...]: run PROG (like exec) and require exit
	// status CODE. stdout and stderr are kept for the next stdout/stderr.
	"exits": cmdExits,
	// jobid VAR [NAME]: set VAR to the id of the newest job (with that
	// --name, if given), read with drover jobs --json; waits for one to
	// exist.
	"jobid": cmdJobID,
	// waitstate JOB STATE: poll drover show --json until the job is in
	// STATE (one of a comma-separated list).
	"waitstate": cmdWaitState,
	// waitfile FILE: poll until FILE exists.
	"waitfile": cmdWaitFile,
	// json [-f FILE] PATH [WANT]: check a value of the JSON in the last
	// stdout (or FILE). See jsonPath for PATH. Without WANT, that the path
	// exists; strings compare as text (or as JSON when WANT starts with a
	// double quote, for "a\n"), other values as compact JSON. Quote
	// a path with "#": testscript starts comments with it.
	"json": cmdJSON,
	// jsonvar VAR PATH: set VAR to the value at PATH in the last stdout.
	"jsonvar": cmdJSONVar,
	// bg NAME PROG [ARGS...]: start PROG in the background, its output in
	// $WORK/NAME.stdout and NAME.stderr.
	"bg": cmdBg,
	// bgwait NAME CODE: wait for background NAME to exit with status CODE.
	"bgwait": cmdBgWait,
	// bgkill NAME INT|TERM|KILL: signal background NAME.
	"bgkill": cmdBgKill,
	// serve DIR VAR: serve DIR over HTTP on 127.0.0.1 and set VAR to its
	// URL. Besides DIR's files: /echo answers a JSON description of the
	// request, /status/N answers status N, /flaky/N fails with 503 N times
	// before it answers 200.
	"serve": cmdServe,
	// sqlite FILE SQL: execute SQL on the SQLite file FILE.
	"sqlite": cmdSQLite,
	// sleep DURATION: for durable timers that have to come due.
	"sleep": cmdSleep,
}

// envKeys are the variables drover processes started by the commands
// above get from the script.
var envKeys = []string{"PATH", "HOME", "TMPDIR", "WORK", "USER", "XDG_DATA_HOME",
	"DROVER_DB", "DROVER_LEASE", "GOCOVERDIR", "GOTRACEBACK"}

func scriptEnv(ts *testscript.TestScript) []string {
	var env []string
	for _, k := range envKeys {
		if v := ts.Getenv(k); v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// command builds PROG ARGS with the script's environment and directory.
func command(ts *testscript.TestScript, prog string, args ...string) *exec.Cmd {
	path, err := exec.LookPath(prog)
	if err != nil {
		ts.Fatalf("%v", err)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = scriptEnv(ts)
	cmd.Dir = ts.MkAbs(".")
	return cmd
}

// drover runs drover quietly (not through the script's stdout) and
// returns its stdout.
func drover(ts *testscript.TestScript, args ...string) (string, error) {
	cmd := command(ts, "drover", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("drover %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits CODE PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("%s: %v", args[1], err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
	}
}

type jobRow struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	State   string    `json:"state"`
	Created time.Time `json:"created"`
}

func cmdJobID(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: jobid VAR [NAME]")
	}
	// A job started in the background may not exist yet: poll.
	deadline := time.Now().Add(pollTimeout)
	for {
		out, err := drover(ts, "jobs", "--json")
		ts.Check(err)
		var rows []jobRow
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			ts.Fatalf("drover jobs --json: %v\n%s", err, out)
		}
		var best *jobRow
		for i := range rows {
			r := &rows[i]
			if len(args) == 2 && r.Name != args[1] {
				continue
			}
			if best == nil || !r.Created.Before(best.Created) {
				best = r
			}
		}
		if best != nil {
			ts.Setenv(args[0], best.ID)
			ts.Logf("%s=%s (%s)", args[0], best.ID, best.State)
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("no job %s in drover jobs --json after %s:\n%s", strings.Join(args[1:], ""), pollTimeout, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func jobState(ts *testscript.TestScript, id string) (string, error) {
	out, err := drover(ts, "show", "--json", id)
	if err != nil {
		return "", err
	}
	var v struct {
		Job struct {
			State string `json:"state"`
		} `json:"job"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return "", fmt.Errorf("drover show --json: %v\n%s", err, out)
	}
	return v.Job.State, nil
}

func cmdWaitState(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitstate JOB STATE[,STATE...]")
	}
	want := strings.Split(args[1], ",")
	deadline := time.Now().Add(pollTimeout)
	last := ""
	for {
		st, err := jobState(ts, args[0])
		if err == nil {
			last = st
			for _, w := range want {
				if st == w {
					ts.Logf("job %s is %s", args[0], st)
					return
				}
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			ts.Fatalf("job %s is still %s after %s; want %s", args[0], last, pollTimeout, args[1])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cmdWaitFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitfile FILE")
	}
	deadline := time.Now().Add(pollTimeout)
	for {
		if _, err := os.Stat(ts.MkAbs(args[0])); err == nil {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("%s does not exist after %s", args[0], pollTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// jsonPath walks v along a dot-separated path. A segment is an object key,
// an array index, "#" (the length of an array or object, last segment
// only) or "k=v" (the first array element whose field k reads v).
func jsonPath(v any, path string) (any, error) {
	if path == "" || path == "." {
		return v, nil
	}
	segs := strings.Split(path, ".")
	for i, seg := range segs {
		where := strings.Join(segs[:i+1], ".")
		switch x := v.(type) {
		case map[string]any:
			if seg == "#" {
				v = float64(len(x))
				continue
			}
			e, ok := x[seg]
			if !ok {
				return nil, fmt.Errorf("%s: no such key", where)
			}
			v = e
		case []any:
			if seg == "#" {
				v = float64(len(x))
				continue
			}
			if k, want, ok := strings.Cut(seg, "="); ok {
				found := false
				for _, e := range x {
					if m, ok := e.(map[string]any); ok && m[k] != nil && text(m[k]) == want {
						v, found = e, true
						break
					}
				}
				if !found {
					return nil, fmt.Errorf("%s: no element with %s", where, seg)
				}
				continue
			}
			n, err := strconv.Atoi(seg)
			if err != nil || n < 0 || n >= len(x) {
				return nil, fmt.Errorf("%s: no element %s in an array of %d", where, seg, len(x))
			}
			v = x[n]
		default:
			return nil, fmt.Errorf("%s: %s is not an object or an array", where, text(v))
		}
	}
	return v, nil
}

// text renders a JSON value: strings as they are, the rest as JSON.
func text(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func readJSON(ts *testscript.TestScript, file string) any {
	data := ts.ReadFile(file)
	dec := json.NewDecoder(strings.NewReader(data))
	var v any
	if err := dec.Decode(&v); err != nil {
		ts.Fatalf("%s is not JSON: %v\n%s", file, err, data)
	}
	return v
}

func cmdJSON(ts *testscript.TestScript, neg bool, args []string) {
	file := "stdout"
	if len(args) >= 2 && args[0] == "-f" {
		file, args = args[1], args[2:]
	}
	if len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: json [-f FILE] PATH [WANT]")
	}
	v, err := jsonPath(readJSON(ts, file), args[0])
	if len(args) == 1 {
		switch {
		case err != nil && !neg:
			ts.Fatalf("%v", err)
		case err == nil && neg:
			ts.Fatalf("%s exists: %s", args[0], text(v))
		}
		return
	}
	if err != nil {
		ts.Fatalf("%v", err)
	}
	got := text(v)
	if strings.HasPrefix(args[1], `"`) {
		b, _ := json.Marshal(v)
		got = string(b)
	}
	switch {
	case got != args[1] && !neg:
		ts.Fatalf("%s is %s, want %s", args[0], got, args[1])
	case got == args[1] && neg:
		ts.Fatalf("%s is %s", args[0], got)
	}
}

func cmdJSONVar(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: jsonvar VAR PATH")
	}
	v, err := jsonPath(readJSON(ts, "stdout"), args[1])
	ts.Check(err)
	ts.Setenv(args[0], text(v))
}

// Background processes of one script.
const bgKey = "drover.bg"

type bgProcs struct {
	mu    sync.Mutex
	procs map[string]*bgProc
}

type bgProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func procsOf(ts *testscript.TestScript) *bgProcs { return ts.Value(bgKey).(*bgProcs) }

func killAll(p *bgProcs) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.procs {
		select {
		case <-b.done:
		default:
			_ = b.cmd.Process.Kill()
			<-b.done
		}
	}
}

func cmdBg(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: bg NAME PROG [ARGS...]")
	}
	name := args[0]
	p := procsOf(ts)
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.procs[name]; ok {
		ts.Fatalf("background %s exists already", name)
	}
	cmd := command(ts, args[1], args[2:]...)
	stdout, err := os.Create(ts.MkAbs(name + ".stdout"))
	ts.Check(err)
	stderr, err := os.Create(ts.MkAbs(name + ".stderr"))
	ts.Check(err)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	ts.Check(cmd.Start())
	b := &bgProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		b.err = cmd.Wait()
		stdout.Close()
		stderr.Close()
		close(b.done)
	}()
	p.procs[name] = b
}

func bgByName(ts *testscript.TestScript, name string) *bgProc {
	p := procsOf(ts)
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.procs[name]
	if b == nil {
		ts.Fatalf("no background process %s", name)
	}
	return b
}

func cmdBgWait(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: bgwait NAME CODE")
	}
	want, err := strconv.Atoi(args[1])
	ts.Check(err)
	b := bgByName(ts, args[0])
	select {
	case <-b.done:
	case <-time.After(pollTimeout):
		ts.Fatalf("background %s still runs after %s", args[0], pollTimeout)
	}
	for _, f := range []string{".stdout", ".stderr"} {
		if data, err := os.ReadFile(ts.MkAbs(args[0] + f)); err == nil && len(data) > 0 {
			ts.Logf("[%s%s]\n%s", args[0], f, data)
		}
	}
	got := 0
	if b.err != nil {
		var ee *exec.ExitError
		if !errors.As(b.err, &ee) {
			ts.Fatalf("background %s: %v", args[0], b.err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("background %s exited with status %d, want %d", args[0], got, want)
	}
}

func cmdBgKill(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: bgkill NAME INT|TERM|KILL")
	}
	sig := map[string]os.Signal{"INT": os.Interrupt, "TERM": syscall.SIGTERM, "KILL": os.Kill}[args[1]]
	if sig == nil {
		ts.Fatalf("unknown signal %s", args[1])
	}
	ts.Check(bgByName(ts, args[0]).cmd.Process.Signal(sig))
}

func cmdServe(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: serve DIR VAR")
	}
	var mu sync.Mutex
	hits := map[string]int{}
	mux := http.NewServeMux()
	mux.Handle("/", http.FileServer(http.Dir(ts.MkAbs(args[0]))))
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		hdr := map[string]string{}
		for k := range r.Header {
			hdr[k] = r.Header.Get(k)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Served-By", "drover-test")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "path": r.URL.Path, "headers": hdr, "body": string(body),
		})
	})
	mux.HandleFunc("/status/{code}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("code"))
		if err != nil {
			code = http.StatusBadRequest
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d\n", code)
	})
	mux.HandleFunc("/flaky/{n}", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.PathValue("n"))
		mu.Lock()
		hits[r.URL.Path]++
		hit := hits[r.URL.Path]
		mu.Unlock()
		if hit <= n {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "try again (%d of %d failures)\n", hit, n)
			return
		}
		fmt.Fprintf(w, "ok after %d failures\n", n)
	})
	srv := httptest.NewServer(mux)
	ts.Defer(srv.Close)
	ts.Setenv(args[1], srv.URL)
}

func cmdSQLite(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: sqlite FILE SQL")
	}
	db, err := sql.Open("sqlite", ts.MkAbs(args[0]))
	ts.Check(err)
	defer db.Close()
	_, err = db.Exec(args[1])
	ts.Check(err)
}

func cmdSleep(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: sleep DURATION")
	}
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	time.Sleep(d)
}
