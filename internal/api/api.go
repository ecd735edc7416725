// Package api is the vocabulary of drover server's HTTP API: the bodies
// it takes and answers, and the few steps that both the server and the
// command line's local mode take the same way (preparing a job from a
// request, building a job's detail), so that the two modes validate
// alike and print alike. docs/api.md describes the API.
package api

import (
	"encoding/json"
	"time"

	"github.com/drover/drover/internal/job"
)

// Prefix is where the API's paths start.
const Prefix = "/api/v1"

// Job is a job as the API and the command line show it: the stored job
// with its effective state (a running job whose engine died reads
// interrupted).
type Job struct {
	*job.Job
	State job.State `json:"state"`
}

// Fix makes the embedded job's state the effective one, after decoding.
func (v *Job) Fix() {
	if v.Job == nil {
		v.Job = &job.Job{}
	}
	v.Job.State = v.State
}

// JobList is a page of jobs, oldest first. Next, when set, is the after
// parameter of the next page.
type JobList struct {
	Jobs []Job  `json:"jobs"`
	Next string `json:"next,omitempty"`
}

// Show is a job's detail: drover show --json and GET /api/v1/jobs/{id}.
type Show struct {
	Job      Job               `json:"job"`
	Steps    []job.Step        `json:"steps"`
	Children map[job.State]int `json:"children,omitempty"`
	Failed   []FailedChild     `json:"failed_children,omitempty"`
}

// FailedChild is a host whose child job failed, for a parent's summary.
type FailedChild struct {
	ID    string `json:"id"`
	Host  string `json:"host"`
	Error string `json:"error"`
}

// CreateJob is POST /api/v1/jobs: what drover run takes. Give Source (the
// workflow's files) or Workflow (a registered workflow's name).
type CreateJob struct {
	Workflow string          `json:"workflow,omitempty"`
	Source   *job.Source     `json:"source,omitempty"`
	Path     string          `json:"path,omitempty"` // where Source was read, shown by drover show
	Params   []string        `json:"params,omitempty"`
	Input    json.RawMessage `json:"input,omitempty"`
	Name     string          `json:"name,omitempty"`
	Persist  string          `json:"persist,omitempty"`
	OnError  string          `json:"on_error,omitempty"`
	Timeout  string          `json:"timeout,omitempty"` // a Go duration

	// Fan-out: Targets or Inventory (an inventory file's content; its
	// InventoryName picks the format by extension and names it in errors).
	Targets       []string `json:"targets,omitempty"`
	Inventory     string   `json:"inventory,omitempty"`
	InventoryName string   `json:"inventory_name,omitempty"`
	Limit         string   `json:"limit,omitempty"`
	Throttle      int      `json:"throttle,omitempty"`
	Batch         string   `json:"batch,omitempty"`
	MaxFail       string   `json:"max_fail,omitempty"`

	// Endpoint is reserved for named server configurations.
	Endpoint string `json:"endpoint,omitempty"`
}

// Created answers POST /api/v1/jobs.
type Created struct {
	Job      Job `json:"job"`
	Children int `json:"children,omitempty"`
}

// Action is the body of POST .../suspend and .../stop, optional.
type Action struct {
	Reason string `json:"reason,omitempty"`
	// Interrupt (suspend only) also cancels the running steps now, as a
	// second Ctrl-C does; they run again on resume.
	Interrupt bool `json:"interrupt,omitempty"`
}

// Resume is the body of POST .../resume, optional.
type Resume struct {
	// Upgrade replays the current version of the job's workflow: the
	// registered one, or Source for a job started from a file.
	Upgrade bool        `json:"upgrade,omitempty"`
	Source  *job.Source `json:"source,omitempty"`
	// Hosts narrows a parent job's rerun to these hosts' children.
	Hosts []string `json:"hosts,omitempty"`
}

// Resumed answers POST .../resume.
type Resumed struct {
	Job Job `json:"job"`
	// Note says what happened besides, for people: "upgraded to source
	// 1a2b3c4d5e6f".
	Note string `json:"note,omitempty"`
	// Position is the Seq of the job's last record when it was resumed:
	// a follower that starts after it sees only what the resumed run adds
	// (replayed emit() and print() calls add nothing).
	Position int64 `json:"position"`
}

// SignalBody is POST .../signals.
type SignalBody struct {
	Name    string          `json:"name"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Records answers GET .../output and .../logs. Next is the after
// parameter that continues where this page ended.
type Records struct {
	Records []job.Record `json:"records"`
	Next    int64        `json:"next"`
}

// AddWorkflow is POST /api/v1/workflows.
type AddWorkflow struct {
	Name   string      `json:"name"`
	Source *job.Source `json:"source"`
}

// Workflow is GET /api/v1/workflows/{name}: drover workflow show --json.
type Workflow struct {
	Workflow  *job.Workflow     `json:"workflow"`
	Signature string            `json:"signature"`
	Files     map[string]string `json:"files"`
}

// WorkflowList answers GET /api/v1/workflows.
type WorkflowList struct {
	Workflows []*job.Workflow `json:"workflows"`
}

// Error is every refusal's body.
type Error struct {
	Error string `json:"error"`
	// Code is a stable word for programs: bad_request, unauthorized,
	// forbidden, not_found, conflict, too_large, unavailable, internal.
	Code string `json:"code"`
	// Position is the script position (file:line:col) of a workflow that
	// failed validation.
	Position string `json:"position,omitempty"`
}

// Whoami answers GET /api/v1/whoami.
type Whoami struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// StepEvent is an SSE step event: a step starting or ending in a job the
// server runs. Step events are live only: they are not stored and not
// replayed to a follower that reconnects.
type StepEvent struct {
	JobID      string `json:"job"`
	Key        string `json:"key"`
	Activity   string `json:"activity"`
	Host       string `json:"host,omitempty"`
	Done       bool   `json:"done"`
	Replayed   bool   `json:"replayed,omitempty"`
	Error      string `json:"error,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`
}

// ProgressEvent is an SSE progress event.
type ProgressEvent struct {
	JobID string `json:"job"`
	job.Progress
}

// End is the data of the SSE end event: the job as it stopped being
// followable, or Gone when it was removed.
type End struct {
	Job  *Job `json:"job,omitempty"`
	Gone bool `json:"gone,omitempty"`
}

// Event streams a follower may ask for (GET .../events?streams=).
const (
	StreamOutput   = "output"
	StreamLog      = "log"
	StreamProgress = "progress"
	StreamStep     = "step"
	StreamState    = "state"
)

// Follow says whether a follower keeps following a job in this state: it
// still runs, will run (queued; interrupted, which a server resumes by
// itself), or sleeps on a timer the server wakes. A job waiting for a
// signal, suspended or ended stops a follower.
func Follow(j *job.Job, state job.State) bool {
	switch state {
	case job.Queued, job.Running, job.Interrupted:
		return true
	case job.Waiting:
		return len(j.WaitFor) == 0 && !j.WakeAt.IsZero()
	}
	return false
}

// ParseTimeout reads a Go duration, "" being none.
func ParseTimeout(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	return time.ParseDuration(s)
}

// AddSchedule is POST /api/v1/schedules: drover schedule add.
type AddSchedule struct {
	Name     string   `json:"name"`
	Cron     string   `json:"cron"`
	Timezone string   `json:"timezone,omitempty"`
	Workflow string   `json:"workflow"` // a registered workflow's name
	Params   []string `json:"params,omitempty"`
}

// ScheduleList answers GET /api/v1/schedules.
type ScheduleList struct {
	Schedules []*job.Schedule `json:"schedules"`
}
