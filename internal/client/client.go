// Package client talks to drover server's HTTP API (docs/api.md): the
// command line's client mode uses it.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/job"
)

// Client is a connection to one drover server, acting with one token.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
	// Timeout bounds a request that is not an event stream. Default 60s.
	Timeout time.Duration
}

// New returns a client of the server at base (http:// or https://). hc
// nil is a plain http.Client.
func New(base, token string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil {
		return nil, fmt.Errorf("server URL %q: %w", base, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server URL %q: want http://HOST:PORT or https://HOST:PORT", base)
	}
	if hc == nil {
		hc = &http.Client{}
	}
	return &Client{base: u, token: token, hc: hc, Timeout: 60 * time.Second}, nil
}

// URL is the server's address.
func (c *Client) URL() string { return c.base.String() }

// Error is the server's refusal of a request.
type Error struct {
	Status   int
	Code     string
	Message  string
	Position string // script position of a workflow that failed validation
}

func (e *Error) Error() string { return e.Message }

// Is lets errors.Is match a 404 with job.ErrNotFound.
func (e *Error) Is(target error) bool {
	return target == job.ErrNotFound && e.Status == http.StatusNotFound
}

// IsStatus reports whether err is a refusal with that status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

func (c *Client) endpoint(path string, q url.Values) string {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + path
	if len(q) > 0 {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

func (c *Client) newRequest(ctx context.Context, method, path string, q url.Values, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(path, q), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("User-Agent", "drover-cli")
	return req, nil
}

// do sends a request and decodes a 2xx answer into out (when not nil).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	req, err := c.newRequest(ctx, method, path, q, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.netErr(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return readError(resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("reading the answer of %s %s: %w", method, path, err)
	}
	return nil
}

func (c *Client) netErr(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("drover server %s: %w", c.base, err)
}

func readError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e api.Error
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return &Error{Status: resp.StatusCode, Code: e.Code, Message: e.Error, Position: e.Position}
	}
	msg := strings.TrimSpace(string(data))
	if msg == "" {
		msg = resp.Status
	}
	return &Error{Status: resp.StatusCode, Message: fmt.Sprintf("drover server: %s: %s", resp.Status, msg)}
}

func jobPath(id string, rest ...string) string {
	p := api.Prefix + "/jobs/" + url.PathEscape(id)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// Whoami names the token's user and role.
func (c *Client) Whoami(ctx context.Context) (*api.Whoami, error) {
	var out api.Whoami
	return &out, c.do(ctx, http.MethodGet, api.Prefix+"/whoami", nil, nil, &out)
}

// CreateJob submits a job; the server starts it in submission order.
func (c *Client) CreateJob(ctx context.Context, r *api.CreateJob) (*api.Created, error) {
	var out api.Created
	if err := c.do(ctx, http.MethodPost, api.Prefix+"/jobs", nil, r, &out); err != nil {
		return nil, err
	}
	out.Job.Fix()
	return &out, nil
}

// JobsQuery selects jobs for Jobs.
type JobsQuery struct {
	States []job.State
	All    bool // children too
	Parent string
	Limit  int
	After  string
}

// Jobs lists a page of jobs.
func (c *Client) Jobs(ctx context.Context, q JobsQuery) (*api.JobList, error) {
	v := url.Values{}
	if len(q.States) > 0 {
		parts := make([]string, len(q.States))
		for i, s := range q.States {
			parts[i] = string(s)
		}
		v.Set("state", strings.Join(parts, ","))
	}
	if q.All {
		v.Set("all", "true")
	}
	if q.Parent != "" {
		v.Set("parent", q.Parent)
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.After != "" {
		v.Set("after", q.After)
	}
	var out api.JobList
	if err := c.do(ctx, http.MethodGet, api.Prefix+"/jobs", v, nil, &out); err != nil {
		return nil, err
	}
	for i := range out.Jobs {
		out.Jobs[i].Fix()
	}
	return &out, nil
}

// Job returns a job's detail.
func (c *Client) Job(ctx context.Context, id string) (*api.Show, error) {
	var out api.Show
	if err := c.do(ctx, http.MethodGet, jobPath(id), nil, nil, &out); err != nil {
		return nil, err
	}
	out.Job.Fix()
	if out.Steps == nil {
		out.Steps = []job.Step{}
	}
	return &out, nil
}

// Remove removes a job; force stops a running one first.
func (c *Client) Remove(ctx context.Context, id string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return c.do(ctx, http.MethodDelete, jobPath(id), q, nil, nil)
}

// Act asks a job to suspend or stop.
func (c *Client) Act(ctx context.Context, id string, a job.Action, body api.Action) (*api.Job, error) {
	var out api.Job
	if err := c.do(ctx, http.MethodPost, jobPath(id, string(a)), nil, body, &out); err != nil {
		return nil, err
	}
	out.Fix()
	return &out, nil
}

// Resume queues a job to continue from its last persisted point.
func (c *Client) Resume(ctx context.Context, id string, body api.Resume) (*api.Resumed, error) {
	var out api.Resumed
	if err := c.do(ctx, http.MethodPost, jobPath(id, "resume"), nil, body, &out); err != nil {
		return nil, err
	}
	out.Job.Fix()
	return &out, nil
}

// Signal delivers a signal to a waiting job.
func (c *Client) Signal(ctx context.Context, id, name string, payload json.RawMessage) (*api.Job, error) {
	var out api.Job
	if err := c.do(ctx, http.MethodPost, jobPath(id, "signals"), nil, api.SignalBody{Name: name, Payload: payload}, &out); err != nil {
		return nil, err
	}
	out.Fix()
	return &out, nil
}

// Records returns a page of a job's stream after a position.
func (c *Client) Records(ctx context.Context, id string, s job.Stream, after int64, limit int) (*api.Records, error) {
	v := url.Values{"after": {strconv.FormatInt(after, 10)}}
	if limit > 0 {
		v.Set("limit", strconv.Itoa(limit))
	}
	name := "output"
	if s == job.Log {
		name = "logs"
	}
	var out api.Records
	return &out, c.do(ctx, http.MethodGet, jobPath(id, name), v, nil, &out)
}

// Workflows lists the registered workflows.
func (c *Client) Workflows(ctx context.Context) ([]*job.Workflow, error) {
	var out api.WorkflowList
	if err := c.do(ctx, http.MethodGet, api.Prefix+"/workflows", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Workflows, nil
}

// Workflow returns a registered workflow with its signature and files.
func (c *Client) Workflow(ctx context.Context, name string) (*api.Workflow, error) {
	var out api.Workflow
	return &out, c.do(ctx, http.MethodGet, api.Prefix+"/workflows/"+url.PathEscape(name), nil, nil, &out)
}

// AddWorkflow registers a source as a workflow's next version.
func (c *Client) AddWorkflow(ctx context.Context, name string, src *job.Source) (*job.Workflow, error) {
	var out job.Workflow
	return &out, c.do(ctx, http.MethodPost, api.Prefix+"/workflows", nil, api.AddWorkflow{Name: name, Source: src}, &out)
}

// RemoveWorkflow unregisters a workflow.
func (c *Client) RemoveWorkflow(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, api.Prefix+"/workflows/"+url.PathEscape(name), nil, nil, nil)
}

// Schedules lists the schedules.
func (c *Client) Schedules(ctx context.Context) ([]*job.Schedule, error) {
	var out api.ScheduleList
	if err := c.do(ctx, http.MethodGet, api.Prefix+"/schedules", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Schedules, nil
}

// AddSchedule adds a schedule of a registered workflow.
func (c *Client) AddSchedule(ctx context.Context, r *api.AddSchedule) (*job.Schedule, error) {
	var out job.Schedule
	if err := c.do(ctx, http.MethodPost, api.Prefix+"/schedules", nil, r, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RemoveSchedule removes a schedule; the jobs it created stay.
func (c *Client) RemoveSchedule(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, api.Prefix+"/schedules/"+url.PathEscape(name), nil, nil, nil)
}
