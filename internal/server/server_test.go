package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/job"
)

const quick = `
def main(x="a"):
    print("hello", x)
    emit(x)
    return x
`

func TestHealthAndReadiness(t *testing.T) {
	e := newEnv(t, Options{})
	if r := e.call("", "GET", "/healthz", nil); r.status != 200 {
		t.Errorf("healthz = %d %s", r.status, r.body)
	}
	if r := e.call("", "GET", "/readyz", nil); r.status != 200 {
		t.Errorf("readyz = %d %s", r.status, r.body)
	}
	e.stop()
	if r := e.call("", "GET", "/readyz", nil); r.status != http.StatusServiceUnavailable || r.errCode() != "unavailable" {
		t.Errorf("readyz while shut down = %d %s", r.status, r.body)
	}
}

func TestAuthRefusals(t *testing.T) {
	e := newEnv(t, Options{})
	for _, c := range []struct {
		user, method, path string
		body               any
		status             int
		code               string
	}{
		{"", "GET", "/api/v1/jobs", nil, 401, "unauthorized"},
		{"drover_not-a-token", "GET", "/api/v1/jobs", nil, 401, "unauthorized"},
		{"", "GET", "/metrics", nil, 401, "unauthorized"},
		{"val", "POST", "/api/v1/jobs", api.CreateJob{Source: source(quick)}, 403, "forbidden"},
		{"alice", "POST", "/api/v1/workflows", api.AddWorkflow{Name: "w", Source: source(quick)}, 403, "forbidden"},
		{"alice", "DELETE", "/api/v1/workflows/w", nil, 403, "forbidden"},
		{"val", "GET", "/api/v1/endpoints", nil, 501, "not_implemented"},
		{"val", "GET", "/api/v1/nope", nil, 404, "not_found"},
	} {
		r := e.json(c.user, c.method, c.path, c.body)
		if r.status != c.status || r.errCode() != c.code || r.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s as %q = %d %s, want %d %s", c.method, c.path, c.user, r.status, r.body, c.status, c.code)
		}
		if c.status == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s %s: 401 without WWW-Authenticate", c.method, c.path)
		}
	}
	if r := e.call("", "GET", "/api/v1/whoami", nil); r.status != 401 {
		t.Errorf("whoami without token = %d", r.status)
	}
	var who api.Whoami
	e.call("alice", "GET", "/api/v1/whoami", nil).decode(t, &who)
	if who.Name != "alice" || who.Role != "operator" {
		t.Errorf("whoami = %+v", who)
	}
}

// TestNoLeak: operators see and act on their own jobs only; another's job
// is reported as missing, never as forbidden.
func TestNoLeak(t *testing.T) {
	e := newEnv(t, Options{})
	a := e.create("alice", api.CreateJob{Source: source(quick), Name: "alices"})
	b := e.create("bob", api.CreateJob{Source: source(quick), Name: "bobs"})
	e.waitState(a, job.Completed)
	e.waitState(b, job.Completed)

	list := func(user string) []string {
		var l api.JobList
		r := e.call(user, "GET", "/api/v1/jobs", nil)
		if r.status != 200 {
			t.Fatalf("list as %s: %d %s", user, r.status, r.body)
		}
		r.decode(t, &l)
		var ids []string
		for _, j := range l.Jobs {
			ids = append(ids, j.ID)
		}
		return ids
	}
	if got := list("alice"); len(got) != 1 || got[0] != a {
		t.Errorf("alice lists %v, want only %s", got, a)
	}
	if got := list("bob"); len(got) != 1 || got[0] != b {
		t.Errorf("bob lists %v, want only %s", got, b)
	}
	if got := list("val"); len(got) != 2 {
		t.Errorf("the viewer lists %v, want both", got)
	}
	if got := list("root"); len(got) != 2 {
		t.Errorf("the admin lists %v, want both", got)
	}
	for _, p := range []struct{ method, path string }{
		{"GET", "/api/v1/jobs/" + b},
		{"GET", "/api/v1/jobs/" + b + "/output"},
		{"GET", "/api/v1/jobs/" + b + "/logs"},
		{"GET", "/api/v1/jobs/" + b + "/events"},
		{"POST", "/api/v1/jobs/" + b + "/suspend"},
		{"POST", "/api/v1/jobs/" + b + "/stop"},
		{"POST", "/api/v1/jobs/" + b + "/resume"},
		{"DELETE", "/api/v1/jobs/" + b},
	} {
		r := e.call("alice", p.method, p.path, nil)
		want := e.call("alice", p.method, strings.Replace(p.path, b, "nosuchjob", 1), nil)
		if r.status != 404 || r.errCode() != "not_found" || !bytes.Equal(r.body, bytes.ReplaceAll(want.body, []byte("nosuchjob"), []byte(b))) {
			t.Errorf("alice %s %s = %d %s; want the 404 of a missing job (%s)", p.method, p.path, r.status, r.body, want.body)
		}
	}
	r := e.json("alice", "POST", "/api/v1/jobs/"+b+"/signals", api.SignalBody{Name: "go"})
	if r.status != 404 {
		t.Errorf("alice signals bob's job: %d %s", r.status, r.body)
	}
	// The viewer sees it and may not change it.
	if r := e.call("val", "GET", "/api/v1/jobs/"+b, nil); r.status != 200 {
		t.Errorf("viewer gets a job: %d", r.status)
	}
	if r := e.call("val", "DELETE", "/api/v1/jobs/"+b, nil); r.status != 403 || r.errCode() != "forbidden" {
		t.Errorf("viewer removes a job: %d %s", r.status, r.body)
	}
	// The admin acts on anyone's.
	if r := e.call("root", "DELETE", "/api/v1/jobs/"+b, nil); r.status != http.StatusNoContent {
		t.Errorf("admin removes bob's job: %d %s", r.status, r.body)
	}
	if r := e.call("alice", "DELETE", "/api/v1/jobs/"+a, nil); r.status != http.StatusNoContent {
		t.Errorf("alice removes her job: %d %s", r.status, r.body)
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, Options{MaxBody: 4096})
	for _, c := range []struct {
		name   string
		body   string
		ctype  string
		status int
		want   string
	}{
		{"malformed", `{"source": {`, "", 400, "malformed JSON"},
		{"syntax", `{"name": x}`, "", 400, "malformed JSON at byte"},
		{"unknown field", `{"source": {"entry": "wf.star", "files": {"wf.star": "def main(): pass"}}, "bogus": 1}`, "", 400, `unknown field "bogus"`},
		{"wrong type", `{"throttle": "ten"}`, "", 400, "throttle"},
		{"two values", `{} {}`, "", 400, "more data after"},
		{"empty", ``, "", 400, "needs a JSON body"},
		{"oversize", `{"name": "` + strings.Repeat("x", 5000) + `"}`, "", 413, "larger than 4096 bytes"},
		{"form", `a=b`, "application/x-www-form-urlencoded", 415, "must be JSON"},
		{"neither source nor workflow", `{}`, "", 400, "give a workflow's source"},
		{"unknown workflow", `{"workflow": "nope"}`, "", 400, `no workflow named "nope"`},
		{"bad param", `{"source": {"entry": "wf.star", "files": {"wf.star": "def main(x=1): pass"}}, "params": ["x=abc"]}`, "", 400, "x"},
		{"bad timeout", `{"source": {"entry": "wf.star", "files": {"wf.star": "def main(): pass"}}, "timeout": "soon"}`, "", 400, "--timeout"},
		{"escaping file", `{"source": {"entry": "../wf.star", "files": {"../wf.star": "def main(): pass"}}}`, "", 400, "relative path"},
		{"bad inventory", `{"source": {"entry": "wf.star", "files": {"wf.star": "def main(): pass"}}, "inventory": "[web\nx ansible_port=abc", "inventory_name": "hosts.ini"}`, "", 400, "--inventory"},
	} {
		req, _ := http.NewRequest("POST", e.hs.URL+"/api/v1/jobs", strings.NewReader(c.body))
		ct := c.ctype
		if ct == "" {
			ct = "application/json"
		}
		req.Header.Set("Content-Type", ct)
		req.Header.Set("Authorization", "Bearer "+e.tokens["alice"])
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		var ae api.Error
		_ = json.Unmarshal(b, &ae)
		if res.StatusCode != c.status || !strings.Contains(ae.Error, c.want) {
			t.Errorf("%s: %d %s, want %d with %q", c.name, res.StatusCode, b, c.status, c.want)
		}
	}

	// A script that fails validation: 400 with its position.
	r := e.json("alice", "POST", "/api/v1/jobs", api.CreateJob{Source: source("def main():\n    x = \n")})
	var ae api.Error
	r.decode(t, &ae)
	if r.status != 400 || ae.Position != "wf.star:2:9" || !strings.Contains(ae.Error, "syntax error") {
		t.Errorf("syntax error: %d %+v", r.status, ae)
	}
	r = e.json("alice", "POST", "/api/v1/jobs", api.CreateJob{Source: source("def main():\n    nosuch()\n")})
	ae = api.Error{}
	r.decode(t, &ae)
	if r.status != 400 || ae.Position != "wf.star:2:5" || !strings.Contains(ae.Error, "nosuch") {
		t.Errorf("undefined name: %d %+v", r.status, ae)
	}
	r = e.json("root", "POST", "/api/v1/workflows", api.AddWorkflow{Name: "w", Source: source("def main(:\n")})
	ae = api.Error{}
	r.decode(t, &ae)
	if r.status != 400 || ae.Position == "" {
		t.Errorf("workflow with a syntax error: %d %+v", r.status, ae)
	}
	// Nothing was created by any of them.
	var l api.JobList
	e.call("root", "GET", "/api/v1/jobs", nil).decode(t, &l)
	if len(l.Jobs) != 0 {
		t.Errorf("bad requests created jobs: %+v", l.Jobs)
	}
}

func TestJobLifecycle(t *testing.T) {
	e := newEnv(t, Options{})
	id := e.create("alice", api.CreateJob{Source: source(`
def main():
    emit("before")
    v = wait("go")
    emit(v["answer"])
    return v["by"]
`), Name: "approval"})
	v := e.waitState(id, job.Waiting)
	if v.Job.CreatedBy != "alice" || len(v.Steps) != 1 || v.Job.Name != "approval" {
		t.Errorf("waiting job: %+v", v)
	}
	// Resume refuses a job waiting for a signal; a wrong signal is refused.
	if r := e.call("alice", "POST", "/api/v1/jobs/"+id+"/resume", nil); r.status != 409 {
		t.Errorf("resume a waiting job: %d %s", r.status, r.body)
	}
	if r := e.json("alice", "POST", "/api/v1/jobs/"+id+"/signals", api.SignalBody{Name: "other"}); r.status != 409 {
		t.Errorf("wrong signal: %d %s", r.status, r.body)
	}
	r := e.json("alice", "POST", "/api/v1/jobs/"+id+"/signals", api.SignalBody{Name: "go", Payload: json.RawMessage(`{"answer": 42}`)})
	if r.status != 200 {
		t.Fatalf("signal: %d %s", r.status, r.body)
	}
	v = e.waitState(id, job.Completed)
	if string(v.Job.Result) != `"alice"` {
		t.Errorf("result = %s, want the sender", v.Job.Result)
	}
	var recs api.Records
	e.call("val", "GET", "/api/v1/jobs/"+id+"/output", nil).decode(t, &recs)
	if len(recs.Records) != 2 || string(recs.Records[1].Value) != "42" {
		t.Errorf("output = %+v", recs)
	}
	e.call("val", "GET", fmt.Sprintf("/api/v1/jobs/%s/output?after=%d", id, recs.Records[0].Seq), nil).decode(t, &recs)
	if len(recs.Records) != 1 {
		t.Errorf("output after the first = %+v", recs)
	}

	// Suspend, resume, stop.
	id = e.create("alice", api.CreateJob{Source: source(`
def main():
    for i in range(100):
        sh("sleep 0.1")
`)})
	e.waitState(id, job.Running)
	if r := e.call("alice", "POST", "/api/v1/jobs/"+id+"/suspend", nil); r.status != 200 {
		t.Fatalf("suspend: %d %s", r.status, r.body)
	}
	v = e.waitState(id, job.Suspended)
	if !strings.Contains(v.Job.Reason, "suspend requested by alice") {
		t.Errorf("reason = %q", v.Job.Reason)
	}
	if r := e.call("alice", "DELETE", "/api/v1/jobs/"+id, nil); r.status != 204 {
		// A suspended job is not running: it may be removed. Make a new one
		// for the rest.
		t.Fatalf("remove a suspended job: %d %s", r.status, r.body)
	}
	id = e.create("alice", api.CreateJob{Source: source(`
def main():
    for i in range(100):
        sh("sleep 0.1")
`)})
	e.waitState(id, job.Running)
	e.call("alice", "POST", "/api/v1/jobs/"+id+"/suspend", nil)
	e.waitState(id, job.Suspended)
	if r := e.call("alice", "POST", "/api/v1/jobs/"+id+"/resume", nil); r.status != 200 {
		t.Fatalf("resume: %d %s", r.status, r.body)
	}
	e.waitState(id, job.Running)
	if r := e.call("alice", "DELETE", "/api/v1/jobs/"+id, nil); r.status != 409 || !strings.Contains(string(r.body), "--force") {
		t.Errorf("remove a running job: %d %s", r.status, r.body)
	}
	if r := e.json("alice", "POST", "/api/v1/jobs/"+id+"/stop", api.Action{Reason: "enough"}); r.status != 200 {
		t.Fatalf("stop: %d %s", r.status, r.body)
	}
	v = e.waitState(id, job.Stopped)
	if v.Job.Reason != "enough" {
		t.Errorf("stop reason = %q", v.Job.Reason)
	}
	if r := e.call("alice", "DELETE", "/api/v1/jobs/"+id+"?force=true", nil); r.status != 204 {
		t.Errorf("remove: %d %s", r.status, r.body)
	}
	if r := e.call("alice", "GET", "/api/v1/jobs/"+id, nil); r.status != 404 {
		t.Errorf("a removed job: %d", r.status)
	}
}

func TestWorkflows(t *testing.T) {
	e := newEnv(t, Options{})
	r := e.json("root", "POST", "/api/v1/workflows", api.AddWorkflow{Name: "greet", Source: source(quick)})
	if r.status != 201 {
		t.Fatalf("add: %d %s", r.status, r.body)
	}
	var wl api.WorkflowList
	e.call("val", "GET", "/api/v1/workflows", nil).decode(t, &wl)
	if len(wl.Workflows) != 1 || wl.Workflows[0].Version != 1 {
		t.Errorf("list = %+v", wl)
	}
	var w api.Workflow
	e.call("val", "GET", "/api/v1/workflows/greet", nil).decode(t, &w)
	if w.Signature != `main(x="a")` || w.Files["wf.star"] != quick {
		t.Errorf("get = %+v", w)
	}
	id := e.create("alice", api.CreateJob{Workflow: "greet", Params: []string{"x=b"}})
	v := e.waitState(id, job.Completed)
	if v.Job.Workflow != "greet" || string(v.Job.Result) != `"b"` {
		t.Errorf("job of a workflow: %+v", v.Job)
	}
	if r := e.call("root", "DELETE", "/api/v1/workflows/greet", nil); r.status != 204 {
		t.Errorf("remove: %d %s", r.status, r.body)
	}
	if r := e.call("val", "GET", "/api/v1/workflows/greet", nil); r.status != 404 {
		t.Errorf("get a removed workflow: %d", r.status)
	}
}

// TestThrottleOrder: with MaxRunning 1, queued jobs start one at a time
// in submission order.
func TestThrottleOrder(t *testing.T) {
	e := newEnv(t, Options{MaxRunning: 1})
	src := source(`
def main(i=0):
    sh("sleep 0.2")
    return i
`)
	var ids []string
	for i := range 5 {
		ids = append(ids, e.create("alice", api.CreateJob{Source: src, Params: []string{fmt.Sprintf("i=%d", i)}}))
	}
	var queued api.JobList
	e.call("root", "GET", "/api/v1/jobs?state=queued", nil).decode(t, &queued)
	if len(queued.Jobs) < 3 {
		t.Errorf("%d jobs queued right after submission, want at least 3", len(queued.Jobs))
	}
	var prev *api.Show
	for _, id := range ids {
		v := e.waitState(id, job.Completed)
		if prev != nil && !v.Job.Started.After(prev.Job.Ended.Add(-10*time.Millisecond)) {
			t.Errorf("job %s started %s, before job %s ended %s", id, v.Job.Started, prev.Job.ID, prev.Job.Ended)
		}
		prev = v
	}
}

// TestEvents follows a job: records in order with their sequence numbers
// as ids, progress, state, then the end; a follower that reconnects with
// Last-Event-ID gets only what came after.
func TestEvents(t *testing.T) {
	e := newEnv(t, Options{})
	id := e.create("alice", api.CreateJob{Source: source(`
def main(n=6):
    for i in range(n):
        print("log", i)
        emit(i)
        progress(i + 1, n)
        sh("sleep 0.1")
    return n
`)})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := e.follow(ctx, "alice", id, "", "")
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", res.StatusCode, res.Header)
	}
	evs := readEvents(t, res.Body, 1000)
	res.Body.Close()
	var outs, logs []string
	var seqs []string
	sawProgress, sawState := false, false
	for _, ev := range evs {
		switch ev.name {
		case "output":
			var r job.Record
			json.Unmarshal([]byte(ev.data), &r)
			outs = append(outs, string(r.Value))
			seqs = append(seqs, ev.id)
			if fmt.Sprint(r.Seq) != ev.id {
				t.Errorf("event id %s for record %d", ev.id, r.Seq)
			}
		case "log":
			logs = append(logs, ev.id)
			seqs = append(seqs, ev.id)
		case "progress":
			sawProgress = true
		case "state":
			sawState = true
		}
	}
	if strings.Join(outs, ",") != "0,1,2,3,4,5" || len(logs) != 6 || !sawProgress || !sawState {
		t.Fatalf("events: outputs %v, %d logs, progress %v, state %v; all: %+v", outs, len(logs), sawProgress, sawState, evs)
	}
	last := evs[len(evs)-1]
	var end api.End
	json.Unmarshal([]byte(last.data), &end)
	if last.name != "end" || end.Job == nil || end.Job.State != job.Completed {
		t.Errorf("last event = %+v", last)
	}
	// Reconnect after the fourth record: only the rest, once.
	res = e.follow(ctx, "alice", id, "?streams=output", seqs[3])
	evs = readEvents(t, res.Body, 1000)
	res.Body.Close()
	var again []string
	for _, ev := range evs {
		if ev.name == "output" {
			var r job.Record
			json.Unmarshal([]byte(ev.data), &r)
			again = append(again, string(r.Value))
		}
		if ev.name == "log" || ev.name == "progress" {
			t.Errorf("streams=output sent a %s event", ev.name)
		}
	}
	// seqs[3] is the second record's log or output: what follows it.
	if len(again) == 0 || again[len(again)-1] != "5" || len(again) > 5 {
		t.Errorf("after %s: %v", seqs[3], again)
	}
	if r := e.call("alice", "GET", "/api/v1/jobs/"+id+"/events?streams=bogus", nil); r.status != 400 {
		t.Errorf("unknown stream: %d", r.status)
	}
}

// TestSlowAndVanishedFollowers: a follower that does not read and one that
// goes away have no effect on the job, and are dropped.
func TestSlowAndVanishedFollowers(t *testing.T) {
	e := newEnv(t, Options{StreamWriteTimeout: 500 * time.Millisecond})
	id := e.create("alice", api.CreateJob{Source: source(`
def main(n=40):
    for i in range(n):
        emit("x" * 20000)
        sh("sleep 0.05")
    return n
`)})
	e.waitState(id, job.Running)
	// A slow client: it asks and never reads, with a tiny receive window.
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.hs.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(conn, "GET /api/v1/jobs/%s/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", id, e.tokens["alice"])
	// A client that reads a little and hangs up.
	ctx, cancel := context.WithCancel(context.Background())
	res := e.follow(ctx, "alice", id, "", "")
	buf := make([]byte, 100)
	io.ReadFull(res.Body, buf)
	cancel()
	res.Body.Close()

	start := time.Now()
	e.waitState(id, job.Completed)
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("the job took %s with a slow follower", d)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		n := e.followers()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v followers still open", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// followers reads the open event streams from the metrics.
func (e *env) followers() float64 {
	r := e.call("val", "GET", "/metrics", nil)
	for _, line := range strings.Split(string(r.body), "\n") {
		if v, ok := strings.CutPrefix(line, "drover_event_followers "); ok {
			var n float64
			fmt.Sscan(v, &n)
			return n
		}
	}
	e.t.Fatalf("no drover_event_followers in %s", r.body)
	return 0
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, Options{})
	id := e.create("alice", api.CreateJob{Source: source(`
def main():
    sh("true")
`)})
	e.waitState(id, job.Completed)
	r := e.call("val", "GET", "/metrics", nil)
	for _, want := range []string{
		`drover_jobs{state="completed"} 1`,
		`drover_queue_depth 0`,
		`drover_steps_total{activity="sh",outcome="done"} 1`,
		`drover_step_duration_seconds_count{activity="sh"} 1`,
		`drover_jobs_submitted_total 1`,
		`drover_http_requests_total{code="201",route="POST /api/v1/jobs"} 1`,
		`go_goroutines`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestShutdownRequeues: a shutdown suspends a running job at its next
// safe point and queues it again for the next server, which completes it.
func TestShutdownRequeues(t *testing.T) {
	e := newEnv(t, Options{Grace: 5 * time.Second})
	id := e.create("alice", api.CreateJob{Source: source(`
def main():
    for i in range(10):
        sh("sleep 0.2")
        emit(i)
`)})
	e.waitState(id, job.Running)
	time.Sleep(300 * time.Millisecond)
	e.stop()
	j, err := e.st.Job(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != job.Queued || j.Reason != ShutdownReason || j.Owner != "" {
		t.Fatalf("after the shutdown the job is %s (%q), owner %q", j.State, j.Reason, j.Owner)
	}
	if r := e.json("alice", "POST", "/api/v1/jobs", api.CreateJob{Source: source(quick)}); r.status != 503 {
		t.Errorf("create while shut down: %d %s", r.status, r.body)
	}
	// The next server on the same store.
	srv2, err := New(Options{Engine: e.srv.o.Engine, Auth: e.st})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv2.Run(ctx) }()
	defer func() { cancel(); <-done; srv2.Close() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, _ = e.st.Job(context.Background(), id)
		if j.State == job.Completed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the job is %s on the next server", j.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
	recs, _ := e.st.Records(context.Background(), id, job.Output, 0, 0)
	if len(recs) != 10 {
		t.Errorf("%d output records, want 10 (none lost, none twice)", len(recs))
	}
}

func TestNoAuth(t *testing.T) {
	e := newEnv(t, Options{})
	e.srv.auth = nil
	var who api.Whoami
	r := e.call("", "GET", "/api/v1/whoami", nil)
	r.decode(t, &who)
	if r.status != 200 || who.Role != "admin" {
		t.Errorf("whoami without auth: %d %s", r.status, r.body)
	}
}

func TestCookieLogin(t *testing.T) {
	e := newEnv(t, Options{})
	r := e.json("", "POST", "/api/v1/login", map[string]string{"token": e.tokens["alice"]})
	if r.status != 200 {
		t.Fatalf("login: %d %s", r.status, r.body)
	}
	var cookie *http.Cookie
	for _, c := range (&http.Response{Header: r.header}).Cookies() {
		if c.Name == cookieName {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("login cookie = %+v", cookie)
	}
	do := func(method string, csrf bool) int {
		req, _ := http.NewRequest(method, e.hs.URL+"/api/v1/jobs", strings.NewReader(`{"source": {"entry": "wf.star", "files": {"wf.star": "def main(): pass"}}}`))
		req.AddCookie(cookie)
		req.Header.Set("Content-Type", "application/json")
		if csrf {
			req.Header.Set(csrfHeader, "1")
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	if s := do("GET", false); s != 200 {
		t.Errorf("GET with the cookie: %d", s)
	}
	if s := do("POST", false); s != 403 {
		t.Errorf("POST with the cookie and no %s: %d", csrfHeader, s)
	}
	if s := do("POST", true); s != 201 {
		t.Errorf("POST with the cookie and %s: %d", csrfHeader, s)
	}
	if r := e.json("", "POST", "/api/v1/login", map[string]string{"token": "nope"}); r.status != 401 {
		t.Errorf("login with a bad token: %d", r.status)
	}
}

// TestFanout: a parent and its children run under the parent's throttle,
// never taken up on their own; a signalled child brings its parent back.
func TestFanout(t *testing.T) {
	e := newEnv(t, Options{})
	id := e.create("alice", api.CreateJob{Source: source(`
def main():
    print("on", target)
    sh("sleep 0.2", on="local")
    emit(target)
`), Targets: []string{"a", "b", "c"}, Throttle: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := e.follow(ctx, "alice", id, "?streams=output", "")
	evs := readEvents(t, res.Body, 100)
	res.Body.Close()
	var outs []string
	for _, ev := range evs {
		if ev.name == "output" {
			var r job.Record
			json.Unmarshal([]byte(ev.data), &r)
			outs = append(outs, string(r.Value))
		}
	}
	if strings.Join(outs, ",") != `"a","b","c"` {
		t.Errorf("the parent's family events: %v", outs)
	}
	v := e.waitState(id, job.Completed)
	if v.Children[job.Completed] != 3 {
		t.Errorf("children = %v", v.Children)
	}
	var kids api.JobList
	e.call("alice", "GET", "/api/v1/jobs?parent="+id, nil).decode(t, &kids)
	if len(kids.Jobs) != 3 {
		t.Fatalf("children listed: %+v", kids)
	}
	for i := 1; i < len(kids.Jobs); i++ {
		if kids.Jobs[i].Started.Before(kids.Jobs[i-1].Ended) {
			t.Errorf("child %s started before child %s ended: throttle 1 not kept", kids.Jobs[i].ID, kids.Jobs[i-1].ID)
		}
		if kids.Jobs[i].CreatedBy != "alice" {
			t.Errorf("child created by %q", kids.Jobs[i].CreatedBy)
		}
	}
	if r := e.call("bob", "GET", "/api/v1/jobs/"+kids.Jobs[0].ID, nil); r.status != 404 {
		t.Errorf("bob gets alice's child job: %d", r.status)
	}

	// A child waiting for a signal: the parent settles waiting; the
	// signal brings both back.
	id = e.create("alice", api.CreateJob{Source: source(`
def main():
    if target == "b":
        emit(wait("go")["v"])
    else:
        emit(target)
`), Targets: []string{"a", "b"}})
	e.waitState(id, job.Waiting)
	var list api.JobList
	e.call("alice", "GET", "/api/v1/jobs?parent="+id+"&state=waiting", nil).decode(t, &list)
	if len(list.Jobs) != 1 {
		t.Fatalf("waiting children: %+v", list.Jobs)
	}
	r := e.json("alice", "POST", "/api/v1/jobs/"+list.Jobs[0].ID+"/signals", api.SignalBody{Name: "go", Payload: json.RawMessage(`{"v": "signalled"}`)})
	if r.status != 200 {
		t.Fatalf("signal a child: %d %s", r.status, r.body)
	}
	e.waitState(id, job.Completed)
}
