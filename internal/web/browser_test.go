package web_test

// Browser tests: a real drover server (internal/server over a SQLite
// store) behind httptest, and Debian's chromium driven headless over the
// DevTools protocol, doing what an operator does on the page.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	cdppage "github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/local"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/store/sqlite"
)

// chromium finds the browser, or skips the test: CI sets
// DROVER_REQUIRE_BROWSER=1, so that there a missing browser fails.
func chromium(t *testing.T) string {
	t.Helper()
	path := os.Getenv("DROVER_CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("DROVER_REQUIRE_BROWSER") == "1" {
			t.Fatalf("DROVER_REQUIRE_BROWSER=1 but there is no browser at %s: install chromium (apt-get install chromium)", path)
		}
		t.Skipf("install chromium (apt-get install chromium) to run the browser tests: %v", err)
	}
	return path
}

// world is a drover server on a real store, with a token per user: root
// (admin), ops (operator), val (viewer).
type world struct {
	t      *testing.T
	st     *sqlite.Store
	hs     *httptest.Server
	tokens map[string]string

	mu      sync.Mutex
	resumes []int64 // Last-Event-ID of the event streams opened with one
}

func newWorld(t *testing.T) *world { return newWorldAuth(t, true) }

// newWorldAuth makes a world; without auth the server serves every
// request as an anonymous admin (drover server --insecure-no-auth).
func newWorldAuth(t *testing.T, withAuth bool) *world {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "drover.db"))
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, st: st, tokens: map[string]string{}}
	for name, role := range map[string]auth.Role{"root": auth.Admin, "ops": auth.Operator, "val": auth.Viewer} {
		secret, hash, err := auth.NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.CreateToken(ctx, &auth.Token{Name: name, Role: role, Hash: hash}); err != nil {
			t.Fatal(err)
		}
		w.tokens[name] = secret
	}
	o := server.Options{
		Engine: engine.Options{Store: st, Local: &local.Executor{}, Lease: 3 * time.Second},
		Poll:   50 * time.Millisecond,
		Grace:  2 * time.Second,
	}
	if withAuth {
		o.Auth = st
	}
	srv, err := server.New(o)
	if err != nil {
		t.Fatal(err)
	}
	h := srv.Handler()
	w.hs = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get("Last-Event-ID"); v != "" && strings.HasSuffix(r.URL.Path, "/events") {
			n, _ := strconv.ParseInt(v, 10, 64)
			w.mu.Lock()
			w.resumes = append(w.resumes, n)
			w.mu.Unlock()
		}
		h.ServeHTTP(rw, r)
	}))
	rctx, cancel := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ran:
		case <-time.After(20 * time.Second):
			t.Error("the server did not shut down")
		}
		srv.Close()
		w.hs.CloseClientConnections()
		w.hs.Close()
		st.Close()
	})
	return w
}

// call sends a request to the API as user and decodes the answer.
func (w *world) call(user, method, path string, body, out any) int {
	w.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			w.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, w.hs.URL+api.Prefix+path, rd)
	if err != nil {
		w.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+w.tokens[user])
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode >= 300 {
		w.t.Fatalf("%s %s as %s: %d %s", method, path, user, res.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			w.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return res.StatusCode
}

func (w *world) addWorkflow(name, src string) {
	w.t.Helper()
	w.call("root", "POST", "/workflows", api.AddWorkflow{Name: name,
		Source: &job.Source{Entry: name + ".star", Files: map[string]string{name + ".star": src}}}, nil)
}

func (w *world) create(user string, req api.CreateJob) string {
	w.t.Helper()
	var c api.Created
	w.call(user, "POST", "/jobs", req, &c)
	return c.Job.ID
}

func (w *world) waitState(id string, states ...job.State) {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var v api.Show
		w.call("root", "GET", "/jobs/"+id, nil, &v)
		for _, s := range states {
			if v.Job.State == s {
				return
			}
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("job %s is %s, want %v", id, v.Job.State, states)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *world) resumedAfter() []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int64(nil), w.resumes...)
}

// browser is one headless chromium for a test; each page of it is a
// fresh browser context (its own cookies and storage).
type browser struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromium(t)
	shots := os.Getenv("DROVER_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		// Without these, chromium keeps calling out to a network this
		// machine does not have.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.WindowSize(1440, 900),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(func(string, ...any) {}))
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelA()
		t.Fatalf("starting chromium: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		cancelA()
	})
	return &browser{t: t, ctx: ctx, shots: shots}
}

// page is one tab on the page of a world, in a browser context of its
// own.
type page struct {
	t    *testing.T
	w    *world
	b    *browser
	ctx  context.Context
	name string
}

// errorTrap collects the page's uncaught errors, which the tests then
// require to be none.
const errorTrap = `window.__errors = [];
addEventListener('error', (e) => window.__errors.push(String(e.message || e)));
addEventListener('unhandledrejection', (e) => window.__errors.push('unhandled rejection: ' + String(e.reason && e.reason.stack || e.reason)));`

func (b *browser) open(w *world, name string) *page {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	b.t.Cleanup(cancel)
	p := &page{t: b.t, w: w, b: b, ctx: ctx, name: name}
	// The first action opens the tab, which lives as long as the context
	// of that call: no timeout on it.
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, cdppage.AddScriptToEvaluateOnNewDocument, cdppage.AddScriptToEvaluateOnNewDocumentParams{Source: errorTrap})
		return err
	}))
	if err != nil {
		b.t.Fatalf("opening a tab: %v", err)
	}
	return p
}

func (p *page) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.fail("%v", err)
	}
}

func eval[T any](p *page, js string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		p.fail("evaluating %s: %v", js, err)
	}
	return v
}

// waitFor waits until the expression is truthy in the page.
func (p *page) waitFor(what, js string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 35*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(40*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		p.fail("waiting for %s: %v", what, err)
	}
}

// fail keeps a screenshot and the page's text for the log, then fails.
func (p *page) fail(format string, args ...any) {
	p.t.Helper()
	msg := fmt.Sprintf(format, args...)
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		f := filepath.Join(p.b.shots, "failure-"+p.name+".png")
		if os.WriteFile(f, png, 0o644) == nil {
			msg += "\nscreenshot: " + f
		}
	}
	if text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.hash + '\n' + document.body.innerText.slice(0, 3000) + '\nerrors: ' + JSON.stringify(window.__errors || [])`)); err == nil {
		msg += "\npage:\n" + text
	}
	p.t.Fatal(msg)
}

// shot writes a PNG of the whole page.
func (p *page) shot(name string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.fail("screenshot %s: %v", name, err)
	}
	f := filepath.Join(p.b.shots, name+".png")
	if err := os.WriteFile(f, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot %s", f)
	return f
}

// noErrors checks that the page threw nothing.
func (p *page) noErrors() {
	p.t.Helper()
	if errs := eval[[]string](p, `window.__errors || []`); len(errs) > 0 {
		p.t.Errorf("the page threw: %q", errs)
	}
}

// login opens the page and signs in with user's token.
func (p *page) login(user string) {
	p.t.Helper()
	p.do(chromedp.Navigate(p.w.hs.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login-token")),
		// A token is pasted, not typed: one key event per character is
		// slow on a busy machine.
		chromedp.SetValue(chromedp.CSS("#login-token"), p.w.tokens[user]),
		chromedp.Click(chromedp.CSS("#login-submit")))
	p.waitFor("signed in as "+user, fmt.Sprintf(`(document.querySelector('#whoami .user') || {}).textContent === %q && !document.querySelector('#login-dialog').open`, user))
}

func (p *page) click(sel string) {
	p.t.Helper()
	p.do(chromedp.Click(chromedp.CSS(sel)))
}

// clear empties a field as a user's select-all and delete would.
func (p *page) clear(sel string) {
	p.t.Helper()
	eval[bool](p, `(() => { const e = document.querySelector(`+q(sel)+`); e.value = ''; e.dispatchEvent(new Event('input', {bubbles: true})); return true })()`)
}

func q(s string) string { b, _ := json.Marshal(s); return string(b) }

// jobState is the state the job page shows.
const jobState = `(document.querySelector('.job-title .badge') || {dataset: {}}).dataset.state`

// lines is the text of a console's lines.
func lines(p *page, stream string) []string {
	return eval[[]string](p, `[...document.querySelectorAll('#panel-`+stream+` .line .ltext')].map((e) => e.textContent)`)
}

const countWorkflow = `
def main(n=40, pause="0.2"):
    for i in range(n):
        sh("sleep " + pause)
        print("working on item %d" % (i + 1))
        emit("item %d done" % (i + 1))
        progress(i + 1, n, "item %d" % (i + 1))
    return n
`

// gatedWorkflow counts to n; its step for item gate_at waits for the
// file gate, so that the test decides when the job gets past it, however
// slow the machine.
const gatedWorkflow = `
def main(n=40, gate_at=20, gate=""):
    for i in range(1, n + 1):
        if i == gate_at:
            sh("while [ ! -e '%s' ]; do sleep 0.05; done" % gate)
        else:
            sh("sleep 0.1")
        print("working on item %d" % i)
        emit("item %d done" % i)
        progress(i, n, "item %d" % i)
    return n
`

// TestPageFollowSuspendResume: a job started through the API shows up
// running in the list with its progress; its page streams its output
// live, survives dropped connections without losing or repeating a line
// (the browser resumes with Last-Event-ID), and its Suspend and Resume
// buttons suspend it at its next safe point and carry it to completion.
func TestPageFollowSuspendResume(t *testing.T) {
	t.Parallel()
	b := newBrowser(t)
	w := newWorld(t)
	w.addWorkflow("count", gatedWorkflow)
	gate := filepath.Join(t.TempDir(), "gate")
	p := b.open(w, "follow")
	p.login("ops")

	id := w.create("ops", api.CreateJob{Workflow: "count", Name: "count-to-40", Params: []string{"n=40", "gate=" + gate}})
	row := `document.querySelector('tr[data-id=` + q(id) + `]')`
	p.waitFor("the job running in the list, with progress", row+` && `+row+`.querySelector('.badge').dataset.state === 'running' && / \/ 40/.test(`+row+`.querySelector('.c-prog').textContent)`)

	// The filters: text and state.
	p.do(chromedp.SendKeys(chromedp.CSS("#job-filter"), "no-such-job"))
	p.waitFor("the text filter hiding the job", `!`+row+` && document.querySelector('.empty') && !document.querySelector('.empty').hidden`)
	p.clear("#job-filter")
	p.do(chromedp.SendKeys(chromedp.CSS("#job-filter"), "count-to"))
	p.waitFor("the text filter showing the job", row+` !== null`)
	p.click(`.chip[data-state="failed"]`)
	p.waitFor("the state filter hiding the running job", `!`+row)
	p.click(`.chip[data-state="running"]`)
	p.waitFor("the state filter showing the running job", row+` !== null && location.hash.includes('state=running')`)

	p.click(`tr[data-id=` + q(id) + `] a.job-link`)
	p.waitFor("the job page", `location.hash === '#/jobs/`+id+`' && `+jobState+` === 'running'`)
	p.waitFor("live output", `document.querySelectorAll('#panel-output .line').length >= 3 && document.querySelector('#stream-status').textContent === 'Live'`)
	p.waitFor("live steps in the tree", `document.querySelectorAll('.node-step').length >= 3`)

	// Drop every connection: the browser reconnects the stream and
	// resumes after the last record it saw.
	w.hs.CloseClientConnections()
	p.waitFor("the stream reconnecting", `document.querySelector('#stream-status').textContent !== 'Live'`)
	p.waitFor("the stream resumed", `document.querySelector('#stream-status').textContent === 'Live'`)
	if r := w.resumedAfter(); len(r) == 0 || r[0] <= 0 {
		t.Fatalf("the stream was not resumed with Last-Event-ID: %v", r)
	}
	p.waitFor("the job at its gate", `document.querySelectorAll('#panel-output .line').length === 19 && document.querySelector('.node-step[data-key="20"][data-status="running"]')`)

	// Suspend waits for the running step: the page says so.
	p.click(`button[data-action="suspend"]`)
	p.waitFor("the suspend requested", `document.querySelector('.n-info') && document.querySelector('.n-info').textContent.includes('Suspend requested') && document.querySelector('button[data-action="suspend"]').disabled`)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p.waitFor("suspended", jobState+` === 'suspended'`)
	p.waitFor("the stream ended", `document.querySelector('#stream-status').textContent.includes('ended')`)
	p.waitFor("Resume enabled, Suspend disabled", `!document.querySelector('button[data-action="resume"]').disabled && document.querySelector('button[data-action="suspend"]').disabled`)
	p.waitFor("the output up to the safe point", `document.querySelectorAll('#panel-output .line').length === 20`)
	p.waitFor("the journal up to the safe point", `document.querySelectorAll('.node-step[data-status="done"]').length === 20 && !document.querySelector('.node-step[data-status="running"]')`)
	p.shot("job-suspended")

	p.click(`button[data-action="resume"]`)
	p.waitFor("completed", jobState+` === 'completed'`)
	p.waitFor("all the output", `document.querySelectorAll('#panel-output .line').length >= 40`)
	out := lines(p, "output")
	if len(out) != 40 {
		t.Fatalf("%d output lines, want 40 (none lost, none repeated): %q", len(out), out)
	}
	for i, l := range out {
		if want := fmt.Sprintf("item %d done", i+1); l != want {
			t.Fatalf("output line %d is %q, want %q", i+1, l, want)
		}
	}
	p.click("#tab-log")
	p.waitFor("the log", `!document.querySelector('#panel-log').hidden && [...document.querySelectorAll('#panel-log .ltext')].some((e) => e.textContent === 'working on item 40')`)
	p.waitFor("the journal's 40 steps", `document.querySelectorAll('.node-step[data-status="done"]').length === 40`)
	p.waitFor("the result", `[...document.querySelectorAll('details.io pre')].some((e) => e.textContent.trim() === '40')`)
	p.shot("job-completed")
	p.noErrors()
}

const approveWorkflow = `
def main(env="staging"):
    print("deploying to " + env)
    progress(1, 2, "waiting for approval")
    a = wait("go-live", timeout="1h")
    emit("approved by %s: %s" % (a["by"], a["note"]))
    progress(2, 2, "done")
`

// TestPageRunAndSignal: a job started from the page's Run dialog waits
// for a signal; the Signal dialog refuses a payload that is not JSON,
// then sends one, and the job completes with it. A viewer sees the job
// but every action is disabled.
func TestPageRunAndSignal(t *testing.T) {
	t.Parallel()
	b := newBrowser(t)
	w := newWorld(t)
	w.addWorkflow("approve", approveWorkflow)
	p := b.open(w, "signal")
	p.login("root")

	p.click("#run-open")
	p.waitFor("the Run dialog", `document.querySelector('#run-dialog').open && document.querySelector('#run-workflow').value === 'approve'`)
	p.do(chromedp.SendKeys(chromedp.CSS("#run-name"), "release-42"),
		chromedp.SendKeys(chromedp.CSS("#run-params"), "env=prod"))
	p.click("#run-submit")
	p.waitFor("the new job's page", `location.hash.startsWith('#/jobs/') && `+jobState+` === 'waiting'`)
	id := strings.TrimPrefix(eval[string](p, `location.hash`), "#/jobs/")
	p.waitFor("the waiting notice", `document.querySelector('.n-waiting') && document.querySelector('.n-waiting').textContent.includes('go-live')`)
	p.waitFor("the log", `[...document.querySelectorAll('#panel-log .ltext')].some((e) => e.textContent === 'deploying to prod')`)

	// A viewer sees the job, and can do nothing to it.
	v := b.open(w, "viewer")
	v.login("val")
	v.do(chromedp.Navigate(w.hs.URL + "/#/jobs/" + id))
	v.waitFor("the job as a viewer", jobState+` === 'waiting'`)
	if n := eval[int](v, `[...document.querySelectorAll('.actions button')].filter((b) => !b.disabled).length`); n != 0 {
		t.Errorf("a viewer has %d enabled actions", n)
	}
	v.noErrors()

	p.click(`button[data-action="signal"]`)
	p.waitFor("the Signal dialog", `document.querySelector('#signal-dialog').open && document.querySelector('#signal-name').value === 'go-live'`)
	p.do(chromedp.SendKeys(chromedp.CSS("#signal-payload"), `{"note": ship it}`))
	p.click("#signal-send")
	p.waitFor("the JSON error", `!document.querySelector('#signal-error').hidden && document.querySelector('#signal-error').textContent.includes('not valid JSON') && document.querySelector('#signal-dialog').open`)
	p.shot("signal-dialog")
	p.clear("#signal-payload")
	p.do(chromedp.SendKeys(chromedp.CSS("#signal-payload"), `{"note": "ship it"}`))
	p.click("#signal-send")
	p.waitFor("the dialog closed", `!document.querySelector('#signal-dialog').open`)
	p.waitFor("completed", jobState+` === 'completed'`)
	p.waitFor("the output of the signal", `[...document.querySelectorAll('#panel-output .ltext')].some((e) => e.textContent === 'approved by root: ship it')`)
	p.noErrors()
}

const fleetWorkflow = `
def main(items=["alpha", "beta", "gamma"]):
    def one(item):
        sh("sleep 0.05", on="local")
        return sh("echo " + item, on="local").stdout.strip()
    res = foreach_parallel(items, one, throttle=2)
    def left():
        return sh("echo left", on="local").stdout.strip()
    def right():
        sh("sleep 0.05", on="local")
        return "right"
    parallel(left, right)
    checkpoint()
    print("host %s done" % target)
    emit({"host": target, "results": res})
`

const brokenWorkflow = `
def main():
    sh("echo preparing", on="local")
    sh("echo 'disk /dev/sdb1 is full' >&2; exit 3")
`

// TestPageScreenshots fills a server with jobs in every kind of state
// and keeps screenshots of the pages an operator sees: the sign-in, the
// list, a fanned-out parent with its hosts and parallel branches nested,
// a running job, a failed one, the list in the dark scheme. They are
// written to $DROVER_SCREENSHOTS (default: a temporary directory).
func TestPageScreenshots(t *testing.T) {
	t.Parallel()
	b := newBrowser(t)
	w := newWorld(t)
	w.addWorkflow("count", countWorkflow)
	w.addWorkflow("approve", approveWorkflow)
	w.addWorkflow("fleet", fleetWorkflow)
	w.addWorkflow("broken", brokenWorkflow)

	done := w.create("root", api.CreateJob{Workflow: "count", Name: "warm-cache", Params: []string{"n=3", "pause=0.01"}})
	fleet := w.create("ops", api.CreateJob{Workflow: "fleet", Name: "patch-web", Targets: []string{"web1", "web2", "web3"}})
	broken := w.create("ops", api.CreateJob{Workflow: "broken", Name: "rotate-disks"})
	waiting := w.create("ops", api.CreateJob{Workflow: "approve", Name: "release-41", Params: []string{"env=prod"}})
	susp := w.create("root", api.CreateJob{Workflow: "count", Name: "reindex", Params: []string{"n=100", "pause=0.05"}})
	w.waitState(done, job.Completed)
	w.waitState(fleet, job.Completed)
	w.waitState(broken, job.Failed)
	w.waitState(waiting, job.Waiting)
	w.waitState(susp, job.Running)
	w.call("root", "POST", "/jobs/"+susp+"/suspend", api.Action{}, nil)
	w.waitState(susp, job.Suspended)
	running := w.create("ops", api.CreateJob{Workflow: "count", Name: "drain-queue", Params: []string{"n=1000", "pause=0.1"}})
	w.waitState(running, job.Running)

	p := b.open(w, "screens")
	p.do(chromedp.Navigate(w.hs.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#login-token")))
	p.shot("login")
	p.login("root")
	p.waitFor("the list", `document.querySelectorAll('table.jobs tbody tr').length === 6 && document.querySelector('tr[data-id=`+q(running)+`] .c-prog .fill')`)
	p.shot("jobs")

	p.do(chromedp.Navigate(w.hs.URL + "/#/jobs/" + fleet))
	p.waitFor("the fanned-out parent with its hosts' trees", jobState+` === 'completed' && document.querySelectorAll('.node-child').length === 3 && document.querySelectorAll('.node-child .node-group').length === 6 && document.querySelectorAll('.node-child .node-branch').length === 15`)
	p.waitFor("the hosts' output", `document.querySelectorAll('#panel-output .line').length === 3 && [...document.querySelectorAll('#panel-output .lhost')].map((e) => e.textContent).sort().join() === 'web1,web2,web3'`)
	// The first host's first parallel: foreach_parallel's three branches.
	first := `document.querySelector('.node-child[data-child=` + q(fleet+".1") + `]')`
	p.waitFor("branches of web1", first+`.querySelector('.node-group .kind').textContent === 'parallel' && `+first+`.querySelectorAll('.node-group')[0].querySelectorAll(':scope > ul > .node-branch').length === 3`)
	p.shot("job-fanout")

	// Collapse a group from the keyboard.
	eval[bool](p, first+`.querySelector('.node-group > .trow .twisty').focus() || true`)
	p.do(chromedp.KeyEvent("\r"))
	p.waitFor("the group collapsed", first+`.querySelector('.node-group > .trow .twisty').getAttribute('aria-expanded') === 'false' && document.activeElement.classList.contains('twisty')`)

	p.do(chromedp.Navigate(w.hs.URL + "/#/jobs/" + running))
	p.waitFor("the running job", jobState+` === 'running' && document.querySelectorAll('#panel-output .line').length >= 5 && document.querySelector('.job-progress .fill') && document.querySelectorAll('.node-step').length >= 3 && document.querySelector('.node-step[data-status="running"]')`)
	p.shot("job-running")

	p.do(chromedp.Navigate(w.hs.URL + "/#/jobs/" + broken))
	p.waitFor("the failed job", jobState+` === 'failed' && document.querySelector('.n-failed') && document.querySelector('.node-step[data-status="failed"]')`)
	p.click(`.node-step[data-status="failed"] .twisty`)
	p.waitFor("the failed step's detail", `document.querySelector('.step-detail .error-text')`)
	p.shot("job-failed")

	p.do(chromedp.Navigate(w.hs.URL + "/#/jobs/" + waiting))
	p.waitFor("the waiting job", jobState+` === 'waiting' && document.querySelector('.n-waiting')`)
	p.shot("job-waiting")

	p.do(chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
		return err
	}), chromedp.Navigate(w.hs.URL+"/#/"))
	p.waitFor("the list, dark", `document.querySelectorAll('table.jobs tbody tr').length === 6`)
	p.shot("jobs-dark")
	p.do(chromedp.Navigate(w.hs.URL + "/#/jobs/" + fleet))
	p.waitFor("the fanned-out parent, dark", `document.querySelectorAll('.node-child .node-branch').length === 15`)
	p.shot("job-fanout-dark")
	p.noErrors()
}

// TestPageWithoutAuth: a server without auth (loopback only) shows the
// page at once, as an anonymous admin, with no sign-in and no sign-out.
func TestPageWithoutAuth(t *testing.T) {
	t.Parallel()
	b := newBrowser(t)
	w := newWorldAuth(t, false)
	w.addWorkflow("approve", approveWorkflow)
	id := w.create("root", api.CreateJob{Workflow: "approve"})
	p := b.open(w, "noauth")
	p.do(chromedp.Navigate(w.hs.URL + "/"))
	p.waitFor("the list", `document.querySelector('tr[data-id=`+q(id)+`]') && (document.querySelector('#whoami .user') || {}).textContent === 'anonymous'`)
	if eval[bool](p, `document.querySelector('#login-dialog').open || !document.querySelector('#signout').hidden`) {
		t.Error("a server without auth shows a sign-in or a sign-out")
	}
	p.click(`tr[data-id=` + q(id) + `] a.job-link`)
	p.waitFor("the waiting job, live", jobState+` === 'waiting' && [...document.querySelectorAll('#panel-log .ltext')].some((e) => e.textContent === 'deploying to staging')`)
	p.noErrors()
}
