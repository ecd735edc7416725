package job

import (
	"errors"
	"time"
)

// Schedule fires a registered workflow at the times of a cron
// expression: each fire creates a queued job that a drover server runs.
type Schedule struct {
	Name string `json:"name"`
	// Cron is the expression as the user wrote it: five fields, or a
	// descriptor such as @hourly or @every 10m.
	Cron string `json:"cron"`
	// Timezone is the IANA zone the expression reads in; empty is UTC, so
	// that servers in different zones agree on the fire times.
	Timezone string   `json:"timezone,omitempty"`
	Workflow string   `json:"workflow"`
	Params   []string `json:"params"` // key=value, bound to main's parameters at each fire
	// CreatedBy is the user who added the schedule through a server; its
	// jobs are created by that user too, so that an operator sees them.
	CreatedBy string    `json:"created_by,omitempty"`
	Created   time.Time `json:"created"`
	// NextFire is the scheduled time of the next fire. It is also the key
	// of that fire: a fire commits only while NextFire still holds the time
	// it fired for, so that two servers never fire one time twice.
	NextFire time.Time `json:"next_fire,omitzero"`
	// LastFire is the scheduled time of the last fire, LastJob the job it
	// created, LastError why it created none (the workflow was removed,
	// its parameters changed).
	LastFire  time.Time `json:"last_fire,omitzero"`
	LastJob   string    `json:"last_job,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	Fires     int64     `json:"fires"`
}

// Fire is one firing of a schedule, which a store commits atomically:
// the fire's record, keyed by (Schedule, At), the job, and the schedule
// moved on to Next.
type Fire struct {
	Schedule string
	At       time.Time // the scheduled time fired: the schedule's NextFire
	Next     time.Time // the schedule's next fire time
	Fired    time.Time // when it fired
	// Job is the job created, with its Source; nil when the fire could not
	// make one, Error saying why.
	Job    *Job
	Source *Source
	Error  string
}

// Errors of schedules and leases, matched with errors.Is.
var (
	// ErrExists: a schedule of that name exists.
	ErrExists = errors.New("already exists")
	// ErrFired: the schedule already fired for that time (another server
	// did), or moved on past it.
	ErrFired = errors.New("schedule already fired for that time")
)
