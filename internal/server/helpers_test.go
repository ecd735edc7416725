package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/local"
	"github.com/drover/drover/internal/store/sqlite"
)

// env is a server on a real SQLite store behind httptest, with a token
// per user: root (admin), alice and bob (operators), val (viewer).
type env struct {
	t      *testing.T
	st     *sqlite.Store
	srv    *Server
	hs     *httptest.Server
	tokens map[string]string
	cancel context.CancelFunc
	ran    chan error
}

func newEnv(t *testing.T, o Options) *env {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "drover.db"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, st: st, tokens: map[string]string{}}
	for name, role := range map[string]auth.Role{"root": auth.Admin, "alice": auth.Operator, "bob": auth.Operator, "val": auth.Viewer} {
		secret, hash, err := auth.NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.CreateToken(ctx, &auth.Token{Name: name, Role: role, Hash: hash}); err != nil {
			t.Fatal(err)
		}
		e.tokens[name] = secret
	}
	o.Engine = engine.Options{Store: st, Local: &local.Executor{}, Lease: 3 * time.Second}
	if o.Auth == nil {
		o.Auth = st
	}
	if o.Poll == 0 {
		o.Poll = 50 * time.Millisecond
	}
	e.srv, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	e.hs = httptest.NewServer(e.srv.Handler())
	rctx, cancel := context.WithCancel(ctx)
	e.cancel = cancel
	e.ran = make(chan error, 1)
	go func() { e.ran <- e.srv.Run(rctx) }()
	t.Cleanup(func() {
		e.stop()
		e.hs.Close()
		st.Close()
	})
	return e
}

// stop shuts the server down and waits for Run.
func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case <-e.ran:
	case <-time.After(60 * time.Second):
		e.t.Error("Run did not return")
	}
	e.srv.Close()
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

func (r resp) errCode() string {
	var e api.Error
	_ = json.Unmarshal(r.body, &e)
	return e.Code
}

// call sends a request as user (empty: no token) with a raw body.
func (e *env) call(user, method, path string, body []byte) resp {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.hs.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if user != "" {
		tok, ok := e.tokens[user]
		if !ok {
			tok = user
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

func (e *env) json(user, method, path string, v any) resp {
	e.t.Helper()
	var b []byte
	if v != nil {
		var err error
		if b, err = json.Marshal(v); err != nil {
			e.t.Fatal(err)
		}
	}
	return e.call(user, method, path, b)
}

func source(text string) *job.Source {
	return &job.Source{Entry: "wf.star", Files: map[string]string{"wf.star": text}}
}

// create submits a job as user and returns its id.
func (e *env) create(user string, r api.CreateJob) string {
	e.t.Helper()
	res := e.json(user, "POST", "/api/v1/jobs", r)
	if res.status != http.StatusCreated {
		e.t.Fatalf("create job as %s: %d %s", user, res.status, res.body)
	}
	var c api.Created
	res.decode(e.t, &c)
	return c.Job.ID
}

// waitState polls until the job is in one of the states.
func (e *env) waitState(id string, states ...job.State) *api.Show {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res := e.call("root", "GET", "/api/v1/jobs/"+id, nil)
		if res.status != http.StatusOK {
			e.t.Fatalf("get job %s: %d %s", id, res.status, res.body)
		}
		var v api.Show
		res.decode(e.t, &v)
		for _, s := range states {
			if v.Job.State == s {
				return &v
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s is %s, want %v", id, v.Job.State, states)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sseEvent is one parsed server-sent event.
type sseEvent struct {
	id, name string
	data     string
}

// readEvents reads an event stream until the end event, EOF or the
// limit of events.
func readEvents(t *testing.T, body io.Reader, limit int) []sseEvent {
	t.Helper()
	br := bufio.NewReader(body)
	var out []sseEvent
	var cur sseEvent
	for len(out) < limit {
		line, err := br.ReadString('\n')
		if err != nil {
			return out
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if cur.name != "" {
				out = append(out, cur)
				if cur.name == "end" {
					return out
				}
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			cur.name = line[7:]
		case strings.HasPrefix(line, "data: "):
			cur.data = line[6:]
		}
	}
	return out
}

// follow opens an event stream as user.
func (e *env) follow(ctx context.Context, user, id string, query string, lastID string) *http.Response {
	e.t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", e.hs.URL+"/api/v1/jobs/"+id+"/events"+query, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.tokens[user])
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return res
}
