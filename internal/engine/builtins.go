package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	starjson "go.starlark.net/lib/json"
	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/script"
)

// maxStored bounds the stdout, stderr or body a step keeps in its journal
// record; the full output is in the job's log.
const maxStored = 1 << 20

// predeclared binds the builtins without a job, for validation: module
// code may define functions but not call activities.
func (e *Engine) predeclared(r *run) starlark.StringDict { return e.predeclaredFor(r) }

func (e *Engine) predeclaredFor(r *run) starlark.StringDict {
	b := func(name string, fn func(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error)) *starlark.Builtin {
		return starlark.NewBuiltin(name, func(t *starlark.Thread, bi *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
			if r == nil || frameOf(t) == nil {
				return nil, errNotInMain
			}
			return fn(r, t, bi, args, kw)
		})
	}
	var target starlark.Value = starlark.None
	vars := starlark.NewDict(0)
	if r != nil {
		if r.job.Target != "" {
			target = starlark.String(r.job.Target)
		}
		if len(r.job.Vars) > 0 {
			if v, err := script.FromJSON(r.job.Vars); err == nil {
				if d, ok := v.(*starlark.Dict); ok {
					vars = d
				}
			}
		}
	}
	vars.Freeze()
	return starlark.StringDict{
		"sh":               b("sh", builtinSh),
		"copy":             b("copy", builtinCopy),
		"http":             b("http", builtinHTTP),
		"sleep":            b("sleep", builtinSleep),
		"wait":             b("wait", builtinWait),
		"now":              b("now", builtinNow),
		"uuid":             b("uuid", builtinUUID),
		"parallel":         b("parallel", builtinParallel),
		"foreach_parallel": b("foreach_parallel", builtinForeach),
		"checkpoint":       b("checkpoint", builtinCheckpoint),
		"suspend":          b("suspend", builtinSuspend),
		"emit":             b("emit", builtinEmit),
		"progress":         b("progress", builtinProgress),
		"step_id":          b("step_id", builtinStepID),
		"target":           target,
		"vars":             vars,
		"struct":           starlark.NewBuiltin("struct", starlarkstruct.Make),
		"json":             starjson.Module,
	}
}

// parseDuration accepts a Go duration string or a number of seconds.
func parseDuration(v starlark.Value, what string) (time.Duration, error) {
	switch x := v.(type) {
	case starlark.NoneType:
		return 0, nil
	case starlark.String:
		d, err := time.ParseDuration(string(x))
		if err != nil {
			return 0, fmt.Errorf("%s: %q is not a duration (write it like \"90s\" or \"2h\")", what, string(x))
		}
		if d < 0 {
			return 0, fmt.Errorf("%s: negative duration %s", what, d)
		}
		return d, nil
	case starlark.Int, starlark.Float:
		f, _ := starlark.AsFloat(x)
		if f < 0 {
			return 0, fmt.Errorf("%s: negative duration %v", what, f)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	return 0, fmt.Errorf("%s: want a duration string like \"30s\", got %s", what, v.Type())
}

// resolveHost maps sh()'s on= to a host: the job's target when omitted.
func (r *run) resolveHost(ctx context.Context, on starlark.Value) (Host, error) {
	name := ""
	switch x := on.(type) {
	case starlark.NoneType:
		name = r.job.Target
	case starlark.String:
		name = string(x)
	default:
		return Host{}, fmt.Errorf("on: want a host name, got %s", on.Type())
	}
	if name == "" || name == Local {
		return Host{Name: Local}, nil
	}
	return r.e.hostFor(ctx, r.job, name)
}

func builtinSh(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var cmd string
	var on, env, stdin, timeout starlark.Value = starlark.None, starlark.None, starlark.None, starlark.None
	var retries int
	var retryInterval starlark.Value = starlark.String("5s")
	check := true
	if err := starlark.UnpackArgs(b.Name(), args, kw, "cmd", &cmd, "on?", &on, "env?", &env, "stdin?", &stdin,
		"timeout?", &timeout, "retries?", &retries, "retry_interval?", &retryInterval, "check?", &check); err != nil {
		return nil, err
	}
	envMap := map[string]string{}
	if d, ok := env.(*starlark.Dict); ok {
		for _, kv := range d.Items() {
			k, ok1 := starlark.AsString(kv[0])
			v, ok2 := starlark.AsString(kv[1])
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("sh: env must map strings to strings")
			}
			envMap[k] = v
		}
	} else if env != starlark.None {
		return nil, fmt.Errorf("sh: env must be a dict, got %s", env.Type())
	}
	var stdinData []byte
	if s, ok := starlark.AsString(stdin); ok {
		stdinData = []byte(s)
	} else if stdin != starlark.None {
		return nil, fmt.Errorf("sh: stdin must be a string, got %s", stdin.Type())
	}
	to, err := parseDuration(timeout, "sh: timeout")
	if err != nil {
		return nil, err
	}
	interval, err := parseDuration(retryInterval, "sh: retry_interval")
	if err != nil {
		return nil, err
	}
	if retries < 0 {
		return nil, fmt.Errorf("sh: retries must be 0 or more")
	}
	host, err := r.resolveHost(r.ctx, on)
	if err != nil {
		return nil, fmt.Errorf("sh: %w", err)
	}
	exec := r.e.local
	if !host.IsLocal() {
		exec = r.e.remote
		if exec == nil {
			return nil, fmt.Errorf("sh: host %q: this engine has no SSH executor", host.Name)
		}
		r.mu.Lock()
		r.hosts[host.Name] = host
		r.mu.Unlock()
	}
	digestArgs := map[string]any{"cmd": cmd, "on": host.Name, "env": envMap, "stdin": string(stdinData)}
	return r.step(t, "sh", digestArgs, host.Name, false, func(ctx context.Context, st *job.Step) (json.RawMessage, error) {
		lines := 0
		c := &Command{JobID: r.job.ID, StepKey: st.Key, Host: host, Cmd: cmd, Env: envMap, Stdin: stdinData, Fresh: st.Status == job.StepFailed,
			Line: func(stream, line string) {
				r.mu.Lock()
				lines++
				kind := "s"
				if stream == "stderr" {
					kind = "e"
				}
				key := fmt.Sprintf("%s.%s%d", st.Key, kind, lines)
				rec := job.Record{JobID: r.job.ID, Stream: job.Log, Key: key, Time: r.e.now(), Text: line, Host: host.Name}
				r.records = append(r.records, rec)
				r.changed = true
				r.mu.Unlock()
				r.obs.Record(rec)
			}}
		for {
			st.Attempts++
			sctx, cancel := ctx, context.CancelFunc(func() {})
			if to > 0 {
				sctx, cancel = context.WithTimeout(ctx, to)
			}
			res, err := exec.Exec(sctx, c)
			timedOut := to > 0 && errors.Is(sctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
			cancel()
			var failure error
			switch {
			case timedOut:
				failure = fmt.Errorf("timed out after %s (sh timeout=%q)", to, to)
			case err != nil:
				failure = err
			case res.Code != 0 && check:
				failure = exitError(res)
			}
			if failure == nil {
				return json.Marshal(map[string]any{
					"stdout": clip(res.Stdout), "stderr": clip(res.Stderr), "code": res.Code,
					"host": host.Name, "duration_ms": res.Duration.Milliseconds(),
				})
			}
			if ctx.Err() != nil {
				return nil, failure
			}
			if st.Attempts > retries {
				return nil, failure
			}
			r.logf(t, host.Name, "step %s: attempt %d of %d failed: %s; retrying in %s", st.Key, st.Attempts, retries+1, oneLine(failure.Error()), interval)
			if err := r.sleepCtx(ctx, interval); err != nil {
				return nil, failure
			}
		}
	}, decodeShResult)
}

func decodeShResult(raw json.RawMessage) (starlark.Value, error) {
	var res struct {
		Stdout     string `json:"stdout"`
		Stderr     string `json:"stderr"`
		Code       int    `json:"code"`
		Host       string `json:"host"`
		DurationMS int64  `json:"duration_ms"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("journal record of sh: %w", err)
	}
	return script.Struct(map[string]starlark.Value{
		"stdout": starlark.String(res.Stdout), "stderr": starlark.String(res.Stderr),
		"code": starlark.MakeInt(res.Code), "host": starlark.String(res.Host),
		"duration_ms": starlark.MakeInt64(res.DurationMS),
	}), nil
}

// exitError describes a failed command: its exit code and the tail of
// its stderr, where the cause usually is.
func exitError(res *CommandResult) error {
	tail := tailLines(res.Stderr, 5, 1000)
	if tail == "" {
		return fmt.Errorf("exit code %d (no stderr)", res.Code)
	}
	return fmt.Errorf("exit code %d; stderr ends:\n%s", res.Code, indent(tail))
}

func tailLines(s string, n, maxBytes int) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := strings.Join(lines, "\n")
	if len(out) > maxBytes {
		out = "…" + out[len(out)-maxBytes:]
	}
	return out
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

// oneLine folds a multi-line error into one log line.
func oneLine(s string) string {
	f := strings.Fields(s)
	out := strings.Join(f, " ")
	if len(out) > 500 {
		out = out[:500] + "…"
	}
	return out
}

func clip(s string) string {
	if len(s) > maxStored {
		return s[:maxStored] + "\n[output clipped in the journal; the whole of it is in the job's log]"
	}
	return s
}

func (r *run) logf(t *starlark.Thread, host, format string, args ...any) {
	r.addRecord(t, job.Log, fmt.Sprintf(format, args...), nil, host)
}

func builtinCopy(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var src, dst string
	var on starlark.Value = starlark.None
	fetch := false
	mode := 0
	if err := starlark.UnpackArgs(b.Name(), args, kw, "src", &src, "dst", &dst, "on?", &on, "fetch?", &fetch, "mode?", &mode); err != nil {
		return nil, err
	}
	host, err := r.resolveHost(r.ctx, on)
	if err != nil {
		return nil, fmt.Errorf("copy: %w", err)
	}
	if host.IsLocal() {
		return nil, fmt.Errorf("copy: needs a remote host (on= or a fanned-out job's target)")
	}
	if r.e.copier == nil {
		return nil, fmt.Errorf("copy: this engine has no SSH copier")
	}
	digestArgs := map[string]any{"src": src, "dst": dst, "on": host.Name, "fetch": fetch, "mode": mode}
	return r.step(t, "copy", digestArgs, host.Name, false, func(ctx context.Context, st *job.Step) (json.RawMessage, error) {
		st.Attempts++
		res, err := r.e.copier.Copy(ctx, &Transfer{JobID: r.job.ID, StepKey: st.Key, Host: host, Src: src, Dst: dst, Fetch: fetch, Mode: uint32(mode)})
		if err != nil {
			return nil, err
		}
		return json.Marshal(map[string]any{"bytes": res.Bytes, "sha256": res.SHA256, "skipped": res.Skipped})
	}, func(raw json.RawMessage) (starlark.Value, error) {
		var res struct {
			Bytes   int64  `json:"bytes"`
			SHA256  string `json:"sha256"`
			Skipped bool   `json:"skipped"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return nil, err
		}
		return script.Struct(map[string]starlark.Value{
			"bytes": starlark.MakeInt64(res.Bytes), "sha256": starlark.String(res.SHA256), "skipped": starlark.Bool(res.Skipped),
		}), nil
	})
}

func builtinHTTP(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var url string
	method := "GET"
	var headers, body, timeout starlark.Value = starlark.None, starlark.None, starlark.None
	retries := 0
	var retryInterval starlark.Value = starlark.String("1s")
	if err := starlark.UnpackArgs(b.Name(), args, kw, "url", &url, "method?", &method, "headers?", &headers,
		"body?", &body, "timeout?", &timeout, "retries?", &retries, "retry_interval?", &retryInterval); err != nil {
		return nil, err
	}
	hdr := map[string]string{}
	if d, ok := headers.(*starlark.Dict); ok {
		for _, kv := range d.Items() {
			k, ok1 := starlark.AsString(kv[0])
			v, ok2 := starlark.AsString(kv[1])
			if !ok1 || !ok2 {
				return nil, fmt.Errorf("http: headers must map strings to strings")
			}
			hdr[k] = v
		}
	} else if headers != starlark.None {
		return nil, fmt.Errorf("http: headers must be a dict, got %s", headers.Type())
	}
	var payload []byte
	switch x := body.(type) {
	case starlark.NoneType:
	case starlark.String:
		payload = []byte(string(x))
	case starlark.Bytes:
		payload = []byte(string(x))
	default:
		raw, err := script.ToJSON(body)
		if err != nil {
			return nil, fmt.Errorf("http: body: %w", err)
		}
		payload = raw
		if _, ok := hdr["Content-Type"]; !ok {
			hdr["Content-Type"] = "application/json"
		}
	}
	to, err := parseDuration(timeout, "http: timeout")
	if err != nil {
		return nil, err
	}
	if to == 0 {
		to = 60 * time.Second
	}
	interval, err := parseDuration(retryInterval, "http: retry_interval")
	if err != nil {
		return nil, err
	}
	method = strings.ToUpper(method)
	digestArgs := map[string]any{"url": url, "method": method, "headers": hdr, "body": string(payload)}
	return r.step(t, "http", digestArgs, "", false, func(ctx context.Context, st *job.Step) (json.RawMessage, error) {
		client := &http.Client{Timeout: to}
		for {
			st.Attempts++
			req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(payload))
			if err != nil {
				return nil, err
			}
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			var failure error
			var out json.RawMessage
			if err != nil {
				failure = err
			} else {
				data, rerr := io.ReadAll(io.LimitReader(resp.Body, maxStored))
				resp.Body.Close()
				if rerr != nil {
					failure = rerr
				} else if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
					failure = fmt.Errorf("%s %s: %s", method, url, resp.Status)
					if st.Attempts > retries {
						failure = nil // the status is the result once retries are spent
					}
				}
				if failure == nil {
					h := map[string]string{}
					for k := range resp.Header {
						h[strings.ToLower(k)] = resp.Header.Get(k)
					}
					out, err = json.Marshal(map[string]any{"status": resp.StatusCode, "headers": h, "body": string(data)})
					if err != nil {
						return nil, err
					}
					return out, nil
				}
			}
			if ctx.Err() != nil || st.Attempts > retries {
				return nil, failure
			}
			r.logf(t, "", "step %s: attempt %d of %d failed: %v; retrying in %s", st.Key, st.Attempts, retries+1, failure, interval)
			if err := r.sleepCtx(ctx, interval); err != nil {
				return nil, failure
			}
		}
	}, func(raw json.RawMessage) (starlark.Value, error) {
		var res struct {
			Status  int               `json:"status"`
			Headers map[string]string `json:"headers"`
			Body    string            `json:"body"`
		}
		if err := json.Unmarshal(raw, &res); err != nil {
			return nil, err
		}
		h := starlark.NewDict(len(res.Headers))
		for k, v := range res.Headers {
			_ = h.SetKey(starlark.String(k), starlark.String(v))
		}
		return script.Struct(map[string]starlark.Value{
			"status": starlark.MakeInt(res.Status), "headers": h, "body": starlark.String(res.Body),
		}), nil
	})
}

type timerData struct {
	Wake     time.Time `json:"wake,omitzero"`
	Deadline time.Time `json:"deadline,omitzero"`
}

func builtinSleep(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var dur starlark.Value
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kw, 1, &dur); err != nil {
		return nil, err
	}
	d, err := parseDuration(dur, "sleep")
	if err != nil {
		return nil, err
	}
	return r.step(t, "sleep", map[string]any{"duration": d.String()}, "", true, func(ctx context.Context, st *job.Step) (json.RawMessage, error) {
		var td timerData
		if len(st.Data) > 0 {
			_ = json.Unmarshal(st.Data, &td)
		}
		if td.Wake.IsZero() {
			td.Wake = st.Started.Add(d)
		}
		st.Data, _ = json.Marshal(td)
		st.Attempts = 1
		remaining := td.Wake.Sub(r.e.now())
		if remaining > r.e.short {
			r.setWait("", td.Wake)
			return nil, &errHalt{haltWait}
		}
		if err := r.sleepCtx(ctx, remaining); err != nil {
			var h *errHalt
			if errors.As(err, &h) {
				return nil, err
			}
			return nil, fmt.Errorf("sleep interrupted: %w", err)
		}
		return json.RawMessage("null"), nil
	}, func(json.RawMessage) (starlark.Value, error) { return starlark.None, nil })
}

func builtinWait(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var name string
	var timeout starlark.Value = starlark.None
	var dflt starlark.Value
	if err := starlark.UnpackArgs(b.Name(), args, kw, "name", &name, "timeout?", &timeout, "default?", &dflt); err != nil {
		return nil, err
	}
	if name == "" {
		return nil, fmt.Errorf("wait: the signal name must not be empty")
	}
	to, err := parseDuration(timeout, "wait: timeout")
	if err != nil {
		return nil, err
	}
	var dfltJSON json.RawMessage
	if dflt != nil {
		if dfltJSON, err = script.ToJSON(dflt); err != nil {
			return nil, fmt.Errorf("wait: default: %w", err)
		}
	}
	return r.step(t, "wait", map[string]any{"name": name}, "", true, func(ctx context.Context, st *job.Step) (json.RawMessage, error) {
		var td timerData
		if len(st.Data) > 0 {
			_ = json.Unmarshal(st.Data, &td)
		}
		if td.Deadline.IsZero() && to > 0 {
			td.Deadline = st.Started.Add(to)
		}
		st.Data, _ = json.Marshal(td)
		st.Attempts = 1
		if sig := r.takeSignal(name); sig != nil {
			return signalResult(sig)
		}
		if !td.Deadline.IsZero() && !r.e.now().Before(td.Deadline) {
			if dflt != nil {
				return dfltJSON, nil
			}
			return nil, fmt.Errorf("no signal %q arrived within %s", name, to)
		}
		r.setWait(name, td.Deadline)
		return nil, &errHalt{haltWait}
	}, func(raw json.RawMessage) (starlark.Value, error) { return script.FromJSON(raw) })
}

// takeSignal consumes the oldest undelivered signal of that name; the
// store deletes it in the same transaction that commits the wait step.
func (r *run) takeSignal(name string) *job.Signal {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, s := range r.signals {
		if s.Name == name {
			r.signals = append(r.signals[:i:i], r.signals[i+1:]...)
			r.consume = append(r.consume, s.ID)
			return &s
		}
	}
	return nil
}

// signalResult is what wait() returns: the payload's fields, or the
// payload under "value" when it is not an object, with "by" the sender.
// The sender is set by drover, never by the payload.
func signalResult(s *job.Signal) (json.RawMessage, error) {
	v, err := script.FromJSON(s.Payload)
	if err != nil {
		return nil, fmt.Errorf("signal %s payload: %w", s.Name, err)
	}
	d, ok := v.(*starlark.Dict)
	if !ok {
		d = starlark.NewDict(2)
		if v != starlark.None {
			_ = d.SetKey(starlark.String("value"), v)
		}
	}
	_ = d.SetKey(starlark.String("by"), starlark.String(s.Sender))
	_ = d.SetKey(starlark.String("at"), starlark.String(s.Time.UTC().Format(time.RFC3339Nano)))
	return script.ToJSON(d)
}

func builtinNow(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kw); err != nil {
		return nil, err
	}
	return r.step(t, "now", nil, "", false, func(ctx context.Context, st *job.Step) (json.RawMessage, error) {
		return json.Marshal(r.e.now().UTC().Format(time.RFC3339Nano))
	}, decodeString)
}

func builtinUUID(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kw); err != nil {
		return nil, err
	}
	return r.step(t, "uuid", nil, "", false, func(ctx context.Context, st *job.Step) (json.RawMessage, error) {
		var u [16]byte
		if _, err := rand.Read(u[:]); err != nil {
			return nil, err
		}
		u[6] = u[6]&0x0f | 0x40
		u[8] = u[8]&0x3f | 0x80
		return json.Marshal(fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]))
	}, decodeString)
}

func decodeString(raw json.RawMessage) (starlark.Value, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	return starlark.String(s), nil
}

func builtinCheckpoint(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kw); err != nil {
		return nil, err
	}
	if err := r.checkpoint("checkpoint"); err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	return starlark.None, r.halted()
}

func builtinSuspend(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	reason := ""
	if err := starlark.UnpackArgs(b.Name(), args, kw, "reason?", &reason); err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "suspended by the workflow"
	}
	replayed := true
	_, err := r.step(t, "suspend", map[string]any{"reason": reason}, "", false, func(ctx context.Context, st *job.Step) (json.RawMessage, error) {
		replayed = false
		return json.RawMessage("null"), nil
	}, func(json.RawMessage) (starlark.Value, error) { return starlark.None, nil })
	if err != nil {
		return nil, err
	}
	if replayed {
		return starlark.None, nil
	}
	r.setHalt(haltSuspend, reason)
	return nil, &errHalt{haltSuspend}
}

func builtinEmit(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if len(kw) > 0 {
		return nil, fmt.Errorf("emit: unexpected keyword arguments")
	}
	for _, v := range args {
		raw, err := script.ToJSON(v)
		if err != nil {
			return nil, fmt.Errorf("emit: %w", err)
		}
		r.addRecord(t, job.Output, "", raw, "")
	}
	return starlark.None, nil
}

func builtinProgress(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var done, total starlark.Value = starlark.MakeInt(0), starlark.None
	msg := ""
	if err := starlark.UnpackArgs(b.Name(), args, kw, "done", &done, "total?", &total, "message?", &msg); err != nil {
		return nil, err
	}
	p := job.Progress{Message: msg}
	var ok bool
	if p.Done, ok = starlark.AsFloat(done); !ok {
		return nil, fmt.Errorf("progress: done must be a number, got %s", done.Type())
	}
	if total != starlark.None {
		if p.Total, ok = starlark.AsFloat(total); !ok {
			return nil, fmt.Errorf("progress: total must be a number, got %s", total.Type())
		}
	}
	r.mu.Lock()
	r.progress = &p
	r.changed = true
	replaying := r.toReplay > 0
	r.mu.Unlock()
	if !replaying {
		r.obs.Progress(r.job.ID, p)
	}
	return starlark.None, nil
}

func builtinStepID(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	if err := starlark.UnpackArgs(b.Name(), args, kw); err != nil {
		return nil, err
	}
	return starlark.String(r.job.ID + "/" + frameOf(t).peekKey()), nil
}
