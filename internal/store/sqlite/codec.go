package sqlite

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/drover/drover/internal/job"
)

// Times are stored as unix nanoseconds, 0 for the zero time.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// jsonText is the column value of a JSON document: NULL when absent.
func jsonText(r json.RawMessage) any {
	if len(r) == 0 {
		return nil
	}
	return string(r)
}

// rawJSON is the inverse of jsonText for a column scanned into []byte.
func rawJSON(b []byte) json.RawMessage {
	if b == nil {
		return nil
	}
	return json.RawMessage(b)
}

// nullString is the column value of an optional reference: NULL when empty,
// so that foreign keys do not look for a row with an empty key.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func encodeNames(names []string) (any, error) {
	if len(names) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(names)
	if err != nil {
		return nil, err
	}
	return string(b), nil
}

func decodeNames(b []byte) ([]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return nil, err
	}
	return names, nil
}

// jobColumns are the jobs columns in the order scanJob reads them and
// jobArgs writes them.
const jobColumns = `id, name, workflow, path, digest, input, state, persist, on_error, timeout,
	parent_id, target, vars, spec, owner, lease_until, request, wake_at, wait_for, reason,
	error, result, progress_done, progress_total, progress_msg, steps, runs, created, updated, started,
	ended, created_by, endpoint`

const jobPlaceholders = `?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?`

func jobArgs(j *job.Job) ([]any, error) {
	waitFor, err := encodeNames(j.WaitFor)
	if err != nil {
		return nil, fmt.Errorf("job %s: wait names: %w", j.ID, err)
	}
	return []any{
		j.ID, j.Name, j.Workflow, j.Path, j.Digest, jsonText(j.Input), string(j.State), string(j.Persist), string(j.OnError), int64(j.Timeout),
		nullString(j.ParentID), j.Target, jsonText(j.Vars), jsonText(j.Spec), j.Owner, nanos(j.LeaseUntil), string(j.Request), nanos(j.WakeAt), waitFor, j.Reason,
		j.Error, jsonText(j.Result), j.Progress.Done, j.Progress.Total, j.Progress.Message, j.Steps, j.Runs, nanos(j.Created), nanos(j.Updated), nanos(j.Started),
		nanos(j.Ended), j.CreatedBy, j.Endpoint,
	}, nil
}

// scanner is *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}

func scanJob(sc scanner) (*job.Job, error) {
	var (
		j                                   job.Job
		input, parent, vars, spec, waitFor  []byte
		result                              []byte
		state, persist, onError, request    string
		timeout                             int64
		lease, wake, created, updated, strt int64
		ended                               int64
	)
	err := sc.Scan(
		&j.ID, &j.Name, &j.Workflow, &j.Path, &j.Digest, &input, &state, &persist, &onError, &timeout,
		&parent, &j.Target, &vars, &spec, &j.Owner, &lease, &request, &wake, &waitFor, &j.Reason,
		&j.Error, &result, &j.Progress.Done, &j.Progress.Total, &j.Progress.Message, &j.Steps, &j.Runs, &created, &updated, &strt,
		&ended, &j.CreatedBy, &j.Endpoint,
	)
	if err != nil {
		return nil, err
	}
	j.Input, j.Vars, j.Spec, j.Result = rawJSON(input), rawJSON(vars), rawJSON(spec), rawJSON(result)
	j.ParentID = string(parent)
	j.State, j.Persist, j.OnError, j.Request = job.State(state), job.Persist(persist), job.OnError(onError), job.Action(request)
	j.Timeout = time.Duration(timeout)
	j.LeaseUntil, j.WakeAt = fromNanos(lease), fromNanos(wake)
	j.Created, j.Updated, j.Started, j.Ended = fromNanos(created), fromNanos(updated), fromNanos(strt), fromNanos(ended)
	if j.WaitFor, err = decodeNames(waitFor); err != nil {
		return nil, fmt.Errorf("job %s: wait names: %w", j.ID, err)
	}
	return &j, nil
}

const stepColumns = `key, activity, digest, status, result, error, data, attempts, host, position, started, ended, engine`

func stepArgs(jobID string, st *job.Step) []any {
	return []any{jobID, st.Key, st.Activity, st.Digest, string(st.Status), jsonText(st.Result), st.Error, jsonText(st.Data),
		st.Attempts, st.Host, st.Position, nanos(st.Started), nanos(st.Ended), st.Engine}
}

func scanStep(sc scanner) (job.Step, error) {
	var (
		st             job.Step
		status         string
		result, data   []byte
		started, ended int64
	)
	if err := sc.Scan(&st.Key, &st.Activity, &st.Digest, &status, &result, &st.Error, &data, &st.Attempts, &st.Host, &st.Position, &started, &ended, &st.Engine); err != nil {
		return st, err
	}
	st.Status = job.StepStatus(status)
	st.Result, st.Data = rawJSON(result), rawJSON(data)
	st.Started, st.Ended = fromNanos(started), fromNanos(ended)
	return st, nil
}

const recordColumns = `seq, job_id, stream, key, time, host, value, text`

func recordArgs(r *job.Record) []any {
	return []any{r.JobID, string(r.Stream), r.Key, nanos(r.Time), r.Host, jsonText(r.Value), r.Text}
}

func scanRecord(sc scanner) (job.Record, error) {
	var (
		r      job.Record
		stream string
		t      int64
		value  []byte
	)
	if err := sc.Scan(&r.Seq, &r.JobID, &stream, &r.Key, &t, &r.Host, &value, &r.Text); err != nil {
		return r, err
	}
	r.Stream, r.Time, r.Value = job.Stream(stream), fromNanos(t), rawJSON(value)
	return r, nil
}

const signalColumns = `id, job_id, name, payload, sender, time`

func scanSignal(sc scanner) (job.Signal, error) {
	var (
		sg      job.Signal
		payload []byte
		t       int64
	)
	if err := sc.Scan(&sg.ID, &sg.JobID, &sg.Name, &payload, &sg.Sender, &t); err != nil {
		return sg, err
	}
	sg.Payload, sg.Time = rawJSON(payload), fromNanos(t)
	return sg, nil
}

const workflowColumns = `name, digest, entry, version, created, updated`

func scanWorkflow(sc scanner) (*job.Workflow, error) {
	var (
		w                job.Workflow
		created, updated int64
	)
	if err := sc.Scan(&w.Name, &w.Digest, &w.Entry, &w.Version, &created, &updated); err != nil {
		return nil, err
	}
	w.Created, w.Updated = fromNanos(created), fromNanos(updated)
	return &w, nil
}
