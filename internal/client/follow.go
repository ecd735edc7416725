package client

import (
	"bufio"
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

// Event is one server-sent event of a followed job.
type Event struct {
	Name     string // output, log, progress, step or state
	Record   *job.Record
	Progress *api.ProgressEvent
	Step     *api.StepEvent
	Job      *api.Job // state
}

// FollowOptions say what to follow and from where.
type FollowOptions struct {
	// Streams to receive (api.StreamOutput...); empty: all.
	Streams []string
	// After is the position (a record's Seq) to start after.
	After int64
	// Family: a parent's children's records too; nil: the server's
	// default (yes for a parent).
	Family *bool
	// Retry is called when the stream broke (the server restarted, the
	// network failed) and the client is about to reconnect after wait.
	Retry func(err error, wait time.Duration)
	// MaxOutage gives up after the server was unreachable this long; zero
	// retries until ctx ends.
	MaxOutage time.Duration
}

// Follow streams a job's events to fn until the job stops being
// followable (api.Follow) and returns the end event. A broken stream is
// resumed from the last record received (Last-Event-ID), so that fn sees
// every record once, in order, across server restarts. An error from fn
// ends the follow with it.
func (c *Client) Follow(ctx context.Context, id string, o FollowOptions, fn func(Event) error) (*api.End, error) {
	last := o.After
	wait := 250 * time.Millisecond
	var down time.Time
	for {
		end, got, err := c.followOnce(ctx, id, o, last, func(ev Event) error {
			if ev.Record != nil {
				last = ev.Record.Seq
			}
			return fn(ev)
		})
		if end != nil {
			return end, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var fe *fnError
		if errors.As(err, &fe) {
			return nil, fe.err
		}
		var he *Error
		if errors.As(err, &he) && he.Status != http.StatusServiceUnavailable && he.Status != http.StatusBadGateway && he.Status != http.StatusGatewayTimeout {
			return nil, err
		}
		if got {
			wait, down = 250*time.Millisecond, time.Time{}
		}
		if down.IsZero() {
			down = time.Now()
		}
		if o.MaxOutage > 0 && time.Since(down) > o.MaxOutage {
			return nil, err
		}
		if err == nil {
			err = errors.New("the event stream ended early")
		}
		if o.Retry != nil {
			o.Retry(err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// fnError is an error of the caller's function, which ends a follow.
type fnError struct{ err error }

func (e *fnError) Error() string { return e.err.Error() }

// followOnce reads one event stream. got reports whether any event
// arrived, so that a stream that worked for a while retries quickly.
func (c *Client) followOnce(ctx context.Context, id string, o FollowOptions, after int64, fn func(Event) error) (end *api.End, got bool, err error) {
	q := url.Values{}
	if len(o.Streams) > 0 {
		q.Set("streams", strings.Join(o.Streams, ","))
	}
	if o.Family != nil {
		q.Set("family", strconv.FormatBool(*o.Family))
	}
	req, err := c.newRequest(ctx, http.MethodGet, jobPath(id, "events"), q, nil)
	if err != nil {
		return nil, false, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", strconv.FormatInt(after, 10))
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, false, c.netErr(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, false, readError(resp)
	}
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	var name string
	var data []byte
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, got, c.netErr(err)
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if name == "" && data == nil {
				continue
			}
			got = true
			ev, done, err := decodeEvent(name, data)
			name, data = "", nil
			if err != nil {
				return nil, got, err
			}
			if done != nil {
				return done, got, nil
			}
			if ev.Name != "" {
				if err := fn(ev); err != nil {
					return nil, got, &fnError{err}
				}
			}
		case strings.HasPrefix(line, ":"):
		default:
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "event":
				name = value
			case "data":
				if data != nil {
					data = append(data, '\n')
				}
				data = append(data, value...)
			}
		}
	}
}

func decodeEvent(name string, data []byte) (Event, *api.End, error) {
	ev := Event{Name: name}
	var err error
	switch name {
	case "end":
		var end api.End
		if err := json.Unmarshal(data, &end); err != nil {
			return ev, nil, fmt.Errorf("event %s: %w", name, err)
		}
		if end.Job != nil {
			end.Job.Fix()
		}
		return ev, &end, nil
	case api.StreamOutput, api.StreamLog:
		ev.Record = &job.Record{}
		err = json.Unmarshal(data, ev.Record)
	case api.StreamProgress:
		ev.Progress = &api.ProgressEvent{}
		err = json.Unmarshal(data, ev.Progress)
	case api.StreamStep:
		ev.Step = &api.StepEvent{}
		err = json.Unmarshal(data, ev.Step)
	case api.StreamState:
		ev.Job = &api.Job{}
		if err = json.Unmarshal(data, ev.Job); err == nil {
			ev.Job.Fix()
		}
	default:
		return Event{}, nil, nil // an event this client does not know
	}
	if err != nil {
		return ev, nil, fmt.Errorf("event %s: %w", name, err)
	}
	return ev, nil, nil
}
