// Package job holds the records that describe a drover job, its journal,
// its output and its signals. It is the vocabulary shared by the engine,
// the stores and the presentation layers, and depends on nothing else of
// drover's.
package job

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// State is a job's lifecycle state as users see it.
type State string

// The job states of SPEC section 4.
const (
	Queued      State = "queued"
	Running     State = "running"
	Suspended   State = "suspended"
	Waiting     State = "waiting"
	Completed   State = "completed"
	Failed      State = "failed"
	Stopped     State = "stopped"
	Skipped     State = "skipped"
	Interrupted State = "interrupted"
)

// AllStates lists every state in the order listings show them.
var AllStates = []State{Queued, Running, Suspended, Waiting, Completed, Failed, Stopped, Skipped, Interrupted}

// ParseState returns the state named s.
func ParseState(s string) (State, error) {
	for _, st := range AllStates {
		if string(st) == s {
			return st, nil
		}
	}
	return "", fmt.Errorf("unknown job state %q (want one of %s)", s, joinStates(AllStates))
}

func joinStates(states []State) string {
	parts := make([]string, len(states))
	for i, s := range states {
		parts[i] = string(s)
	}
	return strings.Join(parts, ", ")
}

// Ended reports whether a job in this state will not run again by itself.
// Failed, stopped and skipped jobs may still be resumed by an operator.
func (s State) Ended() bool {
	switch s {
	case Completed, Failed, Stopped, Skipped:
		return true
	}
	return false
}

// Persist is the persistence policy of SPEC 2.1 (PSPersist).
type Persist string

// The persistence policies.
const (
	PersistCheckpoints Persist = "checkpoints"
	PersistAlways      Persist = "always"
	PersistNever       Persist = "never"
)

// ParsePersist validates a --persist value.
func ParsePersist(s string) (Persist, error) {
	switch p := Persist(s); p {
	case PersistCheckpoints, PersistAlways, PersistNever:
		return p, nil
	case "":
		return PersistCheckpoints, nil
	}
	return "", fmt.Errorf("unknown persistence policy %q (want checkpoints, always or never)", s)
}

// OnError says what a step failure that outlived its retries does to a job.
type OnError string

// The --on-error policies.
const (
	OnErrorFail    OnError = "fail"
	OnErrorSuspend OnError = "suspend"
)

// ParseOnError validates an --on-error value.
func ParseOnError(s string) (OnError, error) {
	switch o := OnError(s); o {
	case OnErrorFail, OnErrorSuspend:
		return o, nil
	case "":
		return OnErrorFail, nil
	}
	return "", fmt.Errorf("unknown --on-error policy %q (want fail or suspend)", s)
}

// Action is an operator's request to a job held by an engine.
type Action string

// The actions an operator can request of a running job.
const (
	ActionNone    Action = ""
	ActionSuspend Action = "suspend"
	ActionStop    Action = "stop"
)

// Progress is the last value a job reported with progress().
type Progress struct {
	Done    float64 `json:"done"`
	Total   float64 `json:"total,omitempty"`
	Message string  `json:"message,omitempty"`
}

// Job is one run of a workflow, persisted from the moment it is created.
type Job struct {
	ID       string          `json:"id"`
	Name     string          `json:"name,omitempty"`
	Workflow string          `json:"workflow,omitempty"` // registered workflow name; empty for a file
	Path     string          `json:"path,omitempty"`     // the file a job was started from, for resume --upgrade
	Digest   string          `json:"source_digest"`      // the source the job replays
	Input    json.RawMessage `json:"input"`              // main's arguments as a JSON object

	State   State         `json:"state"`
	Persist Persist       `json:"persist"`
	OnError OnError       `json:"on_error"`
	Timeout time.Duration `json:"timeout,omitempty"`

	// CreatedBy is the user who submitted the job through a drover
	// server (a token's name); empty for jobs created by the command line
	// on the store. Children inherit their parent's. (Owner, below, is the
	// engine holding the job's lease.)
	CreatedBy string `json:"created_by,omitempty"`
	// Endpoint names the server configuration the job was submitted
	// through; reserved, empty for now.
	Endpoint string `json:"endpoint,omitempty"`

	ParentID string          `json:"parent_id,omitempty"`
	Target   string          `json:"target,omitempty"`
	Vars     json.RawMessage `json:"vars,omitempty"`
	Spec     json.RawMessage `json:"spec,omitempty"` // fan-out settings of a parent job

	Owner      string    `json:"owner,omitempty"` // engine holding the lease
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	Request    Action    `json:"request,omitempty"`

	WakeAt  time.Time       `json:"wake_at,omitzero"`
	WaitFor []string        `json:"wait_for,omitempty"`
	Reason  string          `json:"reason,omitempty"` // why it suspended or was stopped
	Error   string          `json:"error,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`

	Progress Progress `json:"progress"`
	Steps    int      `json:"steps"` // committed steps
	Runs     int      `json:"runs"`  // how many times an engine took the job

	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Started time.Time `json:"started,omitzero"`
	Ended   time.Time `json:"ended,omitzero"`
}

// EffectiveState is the state users see: a running job whose lease has
// expired is interrupted, because its engine is gone.
func (j *Job) EffectiveState(now time.Time) State {
	if j.State == Running && !j.LeaseUntil.IsZero() && now.After(j.LeaseUntil) {
		return Interrupted
	}
	return j.State
}

// Source is a workflow's code: the entry file and every file it loads.
type Source struct {
	Digest string            `json:"digest"`
	Entry  string            `json:"entry"`
	Files  map[string]string `json:"files"`
}

// Seal computes the digest over the entry name and every file.
func (s *Source) Seal() {
	h := sha256.New()
	names := make([]string, 0, len(s.Files))
	for n := range s.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(h, "entry %q\n", s.Entry)
	for _, n := range names {
		fmt.Fprintf(h, "file %q %d\n", n, len(s.Files[n]))
		h.Write([]byte(s.Files[n]))
	}
	s.Digest = hex.EncodeToString(h.Sum(nil))
}

// StepStatus is how far a journaled step got.
type StepStatus string

// Step statuses. A pending step has begun something that outlives the
// process (a timer, a wait, a supervised remote command) and records
// what it needs to pick it up again.
const (
	StepPending StepStatus = "pending"
	StepDone    StepStatus = "done"
	StepFailed  StepStatus = "failed"
)

// Step is one journal record: one call of an activity builtin.
type Step struct {
	Key      string          `json:"key"`
	Activity string          `json:"activity"`
	Digest   string          `json:"digest"`
	Status   StepStatus      `json:"status"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    string          `json:"error,omitempty"`
	Data     json.RawMessage `json:"data,omitempty"` // state of a pending step
	Attempts int             `json:"attempts"`
	Host     string          `json:"host,omitempty"`
	Engine   string          `json:"engine,omitempty"`   // the engine (lease owner) that ran it
	Position string          `json:"position,omitempty"` // file:line:col of the call
	Started  time.Time       `json:"started"`
	Ended    time.Time       `json:"ended,omitzero"`
}

// Stream names a job's record stream.
type Stream string

// The two streams of a job.
const (
	Output Stream = "output" // emit(): the job's results (Receive-Job)
	Log    Stream = "log"    // print() and command output
)

// Record is one entry of a job's output or log. Key makes it idempotent:
// a replayed emit() or print() produces the same key and is not stored
// twice.
type Record struct {
	Seq    int64           `json:"seq"`
	JobID  string          `json:"job"`
	Stream Stream          `json:"stream"`
	Key    string          `json:"key"`
	Time   time.Time       `json:"time"`
	Host   string          `json:"host,omitempty"`
	Value  json.RawMessage `json:"value,omitempty"` // output: the emitted value
	Text   string          `json:"text,omitempty"`  // log: the line
}

// Signal is a message delivered to a waiting job.
type Signal struct {
	ID      int64           `json:"id"`
	JobID   string          `json:"job"`
	Name    string          `json:"name"`
	Payload json.RawMessage `json:"payload"`
	Sender  string          `json:"sender"`
	Time    time.Time       `json:"time"`
}

// Workflow is a registered workflow: a name for the current version of a
// source.
type Workflow struct {
	Name    string    `json:"name"`
	Digest  string    `json:"digest"`
	Entry   string    `json:"entry"`
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// Filter selects jobs for a listing.
type Filter struct {
	States   []State // empty: all; Interrupted matches running jobs whose lease expired
	ParentID string  // children of this job
	TopLevel bool    // only jobs without a parent
	Limit    int
	AfterID  string // paging: jobs created after this one (ids sort by creation)
	// CreatedBy: only jobs this user submitted; empty: anyone's.
	CreatedBy string
}

// Update is one atomic change to a held job: journal records, output, the
// job's own fields, consumed signals. Stores apply it in one transaction,
// fenced by Owner so that an engine that lost its lease cannot write.
type Update struct {
	JobID   string
	Owner   string
	Steps   []Step
	Records []Record
	Consume []int64 // signal ids

	State        *State
	Release      bool // give up the lease
	WakeAt       *time.Time
	WaitFor      *[]string
	Reason       *string
	Error        *string
	Result       json.RawMessage
	Progress     *Progress
	Ended        *time.Time
	ClearRequest bool
	// Digest, when set, moves the job to another stored source (resume
	// --upgrade).
	Digest string
}

// Errors stores return, matched with errors.Is.
var (
	ErrNotFound    = errors.New("not found")
	ErrLeaseLost   = errors.New("job lease lost to another engine")
	ErrHeld        = errors.New("job is held by another engine")
	ErrNotWaiting  = errors.New("job is not waiting")
	ErrWrongState  = errors.New("job is not in a state that allows this")
	ErrStoreLocked = errors.New("store is locked")
	ErrNotAStore   = errors.New("not a drover store")
	ErrSchemaNewer = errors.New("store schema is newer than this drover")
	ErrReadOnly    = errors.New("store is read-only")
)
