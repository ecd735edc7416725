package postgres

import (
	"encoding/json"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/drover/drover/internal/job"
)

// Times are timestamptz, NULL for the zero time.
func ts(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

func tsArray(t time.Time) pgtype.Timestamptz {
	return pgtype.Timestamptz{Time: t, Valid: !t.IsZero()}
}

func fromPtr(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// clean makes s storable as PostgreSQL text, which refuses NUL and bytes
// that are not UTF-8, while SQLite keeps any bytes. Command output, which
// becomes log records and step errors, may hold both: they become U+FFFD
// rather than failing the write that journals the step.
func clean(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// jsonArg is the parameter of a json column: NULL when absent. The text
// goes through clean, since json is text to PostgreSQL.
func jsonArg(r json.RawMessage) any {
	if len(r) == 0 {
		return nil
	}
	return clean(string(r))
}

// jsonArrayElem is jsonArg for an element of a json[] parameter.
func jsonArrayElem(r json.RawMessage) *string {
	if len(r) == 0 {
		return nil
	}
	s := clean(string(r))
	return &s
}

// rawJSON is the inverse of jsonArg for a column scanned into []byte.
func rawJSON(b []byte) json.RawMessage {
	if b == nil {
		return nil
	}
	return json.RawMessage(b)
}

// nullString is the parameter of an optional reference: NULL when empty,
// so that foreign keys do not look for a row with an empty key.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// names is the parameter of wait_for: NULL for none, as in the SQLite
// store, so that an empty list reads back as nil.
func names(ns []string) any {
	if len(ns) == 0 {
		return nil
	}
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = clean(n)
	}
	return out
}

// jobColumns are the jobs columns in the order scanJob reads them and
// jobArgs writes them.
const jobColumns = `id, name, workflow, path, digest, input, state, persist, on_error, timeout,
	parent_id, target, vars, spec, owner, lease_until, request, wake_at, wait_for, reason,
	error, result, progress_done, progress_total, progress_msg, steps, runs, created, updated, started,
	ended, created_by, endpoint`

const jobPlaceholders = `$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
	$21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33`

func jobArgs(j *job.Job) []any {
	return []any{
		j.ID, j.Name, j.Workflow, j.Path, j.Digest, jsonArg(j.Input), string(j.State), string(j.Persist), string(j.OnError), j.Timeout,
		nullString(j.ParentID), j.Target, jsonArg(j.Vars), jsonArg(j.Spec), j.Owner, ts(j.LeaseUntil), string(j.Request), ts(j.WakeAt), names(j.WaitFor), clean(j.Reason),
		clean(j.Error), jsonArg(j.Result), j.Progress.Done, j.Progress.Total, clean(j.Progress.Message), j.Steps, j.Runs, j.Created, j.Updated, ts(j.Started),
		ts(j.Ended), clean(j.CreatedBy), clean(j.Endpoint),
	}
}

// scanner is pgx.Row or pgx.Rows.
type scanner interface {
	Scan(dest ...any) error
}

func scanJob(sc scanner) (*job.Job, error) {
	var (
		j                                job.Job
		input, vars, spec, result        []byte
		parent                           *string
		state, persist, onError, request string
		lease, wake, started, ended      *time.Time
	)
	err := sc.Scan(
		&j.ID, &j.Name, &j.Workflow, &j.Path, &j.Digest, &input, &state, &persist, &onError, &j.Timeout,
		&parent, &j.Target, &vars, &spec, &j.Owner, &lease, &request, &wake, &j.WaitFor, &j.Reason,
		&j.Error, &result, &j.Progress.Done, &j.Progress.Total, &j.Progress.Message, &j.Steps, &j.Runs, &j.Created, &j.Updated, &started,
		&ended, &j.CreatedBy, &j.Endpoint,
	)
	if err != nil {
		return nil, err
	}
	j.Input, j.Vars, j.Spec, j.Result = rawJSON(input), rawJSON(vars), rawJSON(spec), rawJSON(result)
	if parent != nil {
		j.ParentID = *parent
	}
	j.State, j.Persist, j.OnError, j.Request = job.State(state), job.Persist(persist), job.OnError(onError), job.Action(request)
	j.LeaseUntil, j.WakeAt, j.Started, j.Ended = fromPtr(lease), fromPtr(wake), fromPtr(started), fromPtr(ended)
	if len(j.WaitFor) == 0 {
		j.WaitFor = nil
	}
	return &j, nil
}

const stepColumns = `key, activity, digest, status, result, error, data, attempts, host, position, started, ended, engine`

func scanStep(sc scanner) (job.Step, error) {
	var (
		st             job.Step
		status         string
		result, data   []byte
		started, ended *time.Time
	)
	if err := sc.Scan(&st.Key, &st.Activity, &st.Digest, &status, &result, &st.Error, &data, &st.Attempts, &st.Host, &st.Position, &started, &ended, &st.Engine); err != nil {
		return st, err
	}
	st.Status = job.StepStatus(status)
	st.Result, st.Data = rawJSON(result), rawJSON(data)
	st.Started, st.Ended = fromPtr(started), fromPtr(ended)
	return st, nil
}

// stepArrays are an Apply's steps as one array per column, the parameters
// of its unnest. Steps are deduplicated by key, the last write of a key
// winning at the place of its first, as successive upserts would leave it:
// one INSERT ... ON CONFLICT DO UPDATE may not touch a row twice.
type stepArrays struct {
	key, activity, digest, status, errs, host, position, engine []string
	result, data                                                []*string
	attempts                                                    []int32
	started, ended                                              []pgtype.Timestamptz
}

func newStepArrays(steps []job.Step) *stepArrays {
	a := &stepArrays{}
	at := make(map[string]int, len(steps))
	for i := range steps {
		st := &steps[i]
		k := clean(st.Key)
		n, seen := at[k]
		if !seen {
			n = len(a.key)
			at[k] = n
			a.key = append(a.key, k)
			a.activity = append(a.activity, "")
			a.digest = append(a.digest, "")
			a.status = append(a.status, "")
			a.result = append(a.result, nil)
			a.errs = append(a.errs, "")
			a.data = append(a.data, nil)
			a.attempts = append(a.attempts, 0)
			a.host = append(a.host, "")
			a.position = append(a.position, "")
			a.engine = append(a.engine, "")
			a.started = append(a.started, pgtype.Timestamptz{})
			a.ended = append(a.ended, pgtype.Timestamptz{})
		}
		a.activity[n] = clean(st.Activity)
		a.digest[n] = clean(st.Digest)
		a.status[n] = string(st.Status)
		a.result[n] = jsonArrayElem(st.Result)
		a.errs[n] = clean(st.Error)
		a.data[n] = jsonArrayElem(st.Data)
		a.attempts[n] = int32(st.Attempts)
		a.host[n] = clean(st.Host)
		a.position[n] = clean(st.Position)
		a.engine[n] = clean(st.Engine)
		a.started[n] = tsArray(st.Started)
		a.ended[n] = tsArray(st.Ended)
	}
	return a
}

func (a *stepArrays) args() []any {
	return []any{a.key, a.activity, a.digest, a.status, a.result, a.errs, a.data, a.attempts, a.host, a.position, a.started, a.ended, a.engine}
}

const recordColumns = `seq, job_id, stream, key, time, host, value, text`

// recordArrays are records as one array per column, for an unnest.
type recordArrays struct {
	jobID, stream, key, host, text []string
	value                          []*string
	time                           []pgtype.Timestamptz
}

func newRecordArrays(recs []job.Record) *recordArrays {
	a := &recordArrays{}
	for i := range recs {
		r := &recs[i]
		a.jobID = append(a.jobID, r.JobID)
		a.stream = append(a.stream, string(r.Stream))
		a.key = append(a.key, clean(r.Key))
		a.time = append(a.time, tsArray(r.Time))
		a.host = append(a.host, clean(r.Host))
		a.value = append(a.value, jsonArrayElem(r.Value))
		a.text = append(a.text, clean(r.Text))
	}
	return a
}

func scanRecord(sc scanner) (job.Record, error) {
	var (
		r      job.Record
		stream string
		t      *time.Time
		value  []byte
	)
	if err := sc.Scan(&r.Seq, &r.JobID, &stream, &r.Key, &t, &r.Host, &value, &r.Text); err != nil {
		return r, err
	}
	r.Stream, r.Time, r.Value = job.Stream(stream), fromPtr(t), rawJSON(value)
	return r, nil
}

const signalColumns = `id, job_id, name, payload, sender, time`

func scanSignal(sc scanner) (job.Signal, error) {
	var (
		sg      job.Signal
		payload []byte
		t       *time.Time
	)
	if err := sc.Scan(&sg.ID, &sg.JobID, &sg.Name, &payload, &sg.Sender, &t); err != nil {
		return sg, err
	}
	sg.Payload, sg.Time = rawJSON(payload), fromPtr(t)
	return sg, nil
}

const workflowColumns = `name, digest, entry, version, created, updated`

func scanWorkflow(sc scanner) (*job.Workflow, error) {
	var w job.Workflow
	if err := sc.Scan(&w.Name, &w.Digest, &w.Entry, &w.Version, &w.Created, &w.Updated); err != nil {
		return nil, err
	}
	return &w, nil
}
