package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/script"
)

// httpError is a refusal: its status, code and message go to the client.
type httpError struct {
	status   int
	code     string
	msg      string
	position string
	cause    error // logged, not sent
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, code, format string, args ...any) *httpError {
	return &httpError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) *httpError {
	return errorf(http.StatusBadRequest, "bad_request", format, args...)
}

func notFound(format string, args ...any) *httpError {
	return errorf(http.StatusNotFound, "not_found", format, args...)
}

func conflict(format string, args ...any) *httpError {
	return errorf(http.StatusConflict, "conflict", format, args...)
}

func forbidden(format string, args ...any) *httpError {
	return errorf(http.StatusForbidden, "forbidden", format, args...)
}

// fromErr maps an error of the engine or the store to a refusal.
func fromErr(err error) *httpError {
	var he *httpError
	if errors.As(err, &he) {
		return he
	}
	switch {
	case errors.Is(err, engine.ErrUsage):
		e := badRequest("%v", err)
		var se *script.Error
		if errors.As(err, &se) && se.Pos.IsValid() {
			e.position = se.Pos.String()
		}
		return e
	case errors.Is(err, job.ErrNotFound):
		return notFound("%v", err)
	case errors.Is(err, job.ErrWrongState), errors.Is(err, job.ErrNotWaiting), errors.Is(err, job.ErrHeld), errors.Is(err, job.ErrExists):
		return conflict("%v", err)
	case errors.Is(err, job.ErrStoreLocked):
		return &httpError{status: http.StatusServiceUnavailable, code: "unavailable", msg: "the store is busy; retry", cause: err}
	}
	return &httpError{status: http.StatusInternalServerError, code: "internal", msg: "internal error; the server's log has the details", cause: err}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, e *httpError) {
	if e.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="drover"`)
	}
	if e.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "2")
	}
	writeJSON(w, e.status, api.Error{Error: e.msg, Code: e.code, Position: e.position})
}

// decode reads a JSON body into v: at most max bytes, no unknown fields,
// one value. An empty body is fine when optional.
func decode(w http.ResponseWriter, r *http.Request, v any, max int64, optional bool) *httpError {
	// A slow sender must not hold the handler forever.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Minute))
	if r.ContentLength == 0 && optional {
		return nil
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		return errorf(http.StatusUnsupportedMediaType, "bad_request", "the body must be JSON (Content-Type: application/json), not %s", ct)
	}
	body := http.MaxBytesReader(w, r.Body, max)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, err2 := dec.Token(); !errors.Is(err2, io.EOF) {
			var mbe *http.MaxBytesError
			if errors.As(err2, &mbe) {
				return tooLarge(max)
			}
			return badRequest("malformed JSON: more data after the JSON value")
		}
		return nil
	}
	var (
		mbe *http.MaxBytesError
		se  *json.SyntaxError
		te  *json.UnmarshalTypeError
	)
	switch {
	case errors.Is(err, io.EOF):
		if optional {
			return nil
		}
		return badRequest("the request needs a JSON body")
	case errors.As(err, &mbe):
		return tooLarge(max)
	case errors.As(err, &se):
		return badRequest("malformed JSON at byte %d: %v", se.Offset, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("malformed JSON: the body ends early")
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "the body"
		}
		return badRequest("malformed JSON: %s: want %s, got %s", field, te.Type, te.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return badRequest("malformed JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return badRequest("malformed JSON: %v", err)
}

func tooLarge(max int64) *httpError {
	return errorf(http.StatusRequestEntityTooLarge, "too_large", "the request body is larger than %d bytes", max)
}
