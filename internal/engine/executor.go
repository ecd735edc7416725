package engine

import (
	"context"
	"encoding/json"
	"time"
)

// Host is where a command runs: "local", or a machine reached over SSH.
type Host struct {
	Name string          `json:"name"`           // inventory name or SSH destination as the script wrote it
	Addr string          `json:"addr,omitempty"` // ansible_host, else Name
	Port int             `json:"port,omitempty"` // ansible_port, 0 for the SSH config's or 22
	User string          `json:"user,omitempty"` // ansible_user, empty for the SSH config's
	Vars json.RawMessage `json:"vars,omitempty"`
}

// Local is the controller itself.
const Local = "local"

// IsLocal reports whether commands for h run on the controller.
func (h Host) IsLocal() bool { return h.Name == "" || h.Name == Local }

// Command is one sh() step to run.
type Command struct {
	JobID   string
	StepKey string // stable across replays: supervised remote commands use it to re-attach
	Host    Host
	Cmd     string
	Env     map[string]string
	Stdin   []byte
	// Line receives output lines as they arrive, for the job's log.
	Line func(stream, line string)
	// Fresh says the journal holds this step as failed: a supervised
	// executor must run it again, not collect the old outcome it kept.
	Fresh bool
}

// CommandResult is what sh() returns.
type CommandResult struct {
	Stdout   string
	Stderr   string
	Code     int
	Duration time.Duration
}

// Executor runs commands. A non-zero exit is a result, not an error; an
// error means the command could not be run or its outcome is unknown
// (the host is unreachable, the connection dropped, the context ended).
type Executor interface {
	Exec(ctx context.Context, c *Command) (*CommandResult, error)
}

// Forgetter is implemented by executors that leave state on hosts for
// supervised commands; the engine calls Forget once a job has ended.
type Forgetter interface {
	Forget(ctx context.Context, h Host, jobID string) error
}

// Transfer is one copy() step.
type Transfer struct {
	JobID   string
	StepKey string
	Host    Host
	Src     string
	Dst     string
	Fetch   bool // download from the host instead of upload
	Mode    uint32
}

// TransferResult is what copy() returns.
type TransferResult struct {
	Bytes  int64
	SHA256 string
	// Skipped is true when the destination already had the same content.
	Skipped bool
}

// Copier transfers files to and from hosts.
type Copier interface {
	Copy(ctx context.Context, t *Transfer) (*TransferResult, error)
}
