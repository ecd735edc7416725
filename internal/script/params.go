package script

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"go.starlark.net/starlark"
)

// ParamError is a usage error in a workflow's parameters: unknown, missing
// or of the wrong type.
type ParamError struct{ Msg string }

func (e *ParamError) Error() string { return e.Msg }

// Param is one parameter of main.
type Param struct {
	Name    string
	Default starlark.Value // nil when required
}

// Signature describes main's parameters.
type Signature struct {
	Params []Param
	Pos    string
}

// SignatureOf reads main's parameters.
func SignatureOf(fn *starlark.Function) Signature {
	var s Signature
	s.Pos = fn.Position().String()
	n := fn.NumParams()
	if fn.HasVarargs() {
		n--
	}
	if fn.HasKwargs() {
		n--
	}
	for i := 0; i < n; i++ {
		name, _ := fn.Param(i)
		s.Params = append(s.Params, Param{Name: name, Default: fn.ParamDefault(i)})
	}
	return s
}

func (s Signature) String() string {
	parts := make([]string, len(s.Params))
	for i, p := range s.Params {
		if p.Default == nil {
			parts[i] = p.Name
		} else {
			parts[i] = p.Name + "=" + p.Default.String()
		}
	}
	return "main(" + strings.Join(parts, ", ") + ")"
}

func (s Signature) param(name string) (Param, bool) {
	for _, p := range s.Params {
		if p.Name == name {
			return p, true
		}
	}
	return Param{}, false
}

// Bind checks and merges parameters given as an --input JSON object and
// as -p key=value pairs (which win), and returns the job's input: a JSON
// object with a value for every parameter given. Missing required
// parameters, unknown names and values of the wrong type are errors.
func (s Signature) Bind(input json.RawMessage, pairs []string) (json.RawMessage, error) {
	values := map[string]json.RawMessage{}
	if len(bytes.TrimSpace(input)) > 0 {
		if err := json.Unmarshal(input, &values); err != nil {
			return nil, &ParamError{fmt.Sprintf("--input must be a JSON object of parameters: %v", err)}
		}
		for name, raw := range values {
			p, ok := s.param(name)
			if !ok {
				return nil, s.unknown(name)
			}
			if err := checkType(p, raw); err != nil {
				return nil, err
			}
			if _, isFloat := p.Default.(starlark.Float); isFloat {
				var f float64
				if json.Unmarshal(raw, &f) == nil {
					values[name] = floatJSON(f)
				}
			}
		}
	}
	for _, kv := range pairs {
		name, text, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, &ParamError{fmt.Sprintf("-p %s: want key=value", kv)}
		}
		p, ok := s.param(name)
		if !ok {
			return nil, s.unknown(name)
		}
		raw, err := coerce(p, text)
		if err != nil {
			return nil, err
		}
		values[name] = raw
	}
	var missing []string
	for _, p := range s.Params {
		if _, ok := values[p.Name]; !ok && p.Default == nil {
			missing = append(missing, p.Name)
		}
	}
	if len(missing) > 0 {
		return nil, &ParamError{fmt.Sprintf("missing parameter %s: %s requires it (give -p %s=VALUE)",
			strings.Join(missing, ", "), s, missing[0])}
	}
	return marshalSorted(values)
}

func (s Signature) unknown(name string) error {
	return &ParamError{fmt.Sprintf("unknown parameter %q: the workflow takes %s", name, s)}
}

// coerce reads a -p value as the type of the parameter's default.
func coerce(p Param, text string) (json.RawMessage, error) {
	bad := func(want string) error {
		return &ParamError{fmt.Sprintf("-p %s=%s: %s takes %s (its default is %s)", p.Name, text, p.Name, want, p.Default)}
	}
	switch d := p.Default.(type) {
	case nil:
		if json.Valid([]byte(text)) {
			return json.RawMessage(text), nil
		}
		return json.Marshal(text)
	case starlark.Bool:
		b, err := strconv.ParseBool(text)
		if err != nil {
			return nil, bad("a bool (true or false)")
		}
		return json.Marshal(b)
	case starlark.Int:
		i, err := strconv.ParseInt(text, 10, 64)
		if err != nil {
			return nil, bad("an int")
		}
		return json.Marshal(i)
	case starlark.Float:
		f, err := strconv.ParseFloat(text, 64)
		if err != nil {
			return nil, bad("a float")
		}
		return floatJSON(f), nil
	case starlark.String:
		return json.Marshal(text)
	case starlark.NoneType:
		if json.Valid([]byte(text)) {
			return json.RawMessage(text), nil
		}
		return json.Marshal(text)
	default:
		_ = d
		raw := json.RawMessage(text)
		if !json.Valid(raw) {
			return nil, bad("a " + p.Default.Type() + " as JSON")
		}
		if err := checkType(p, raw); err != nil {
			return nil, err
		}
		return raw, nil
	}
}

// checkType checks a JSON value against the parameter's default's type.
func checkType(p Param, raw json.RawMessage) error {
	if p.Default == nil || p.Default == starlark.None {
		return nil
	}
	v, err := FromJSON(raw)
	if err != nil {
		return &ParamError{fmt.Sprintf("parameter %s: %v", p.Name, err)}
	}
	want := p.Default.Type()
	got := v.Type()
	if got == want || (want == "float" && got == "int") {
		return nil
	}
	return &ParamError{fmt.Sprintf("parameter %s: got %s %s, want %s (its default is %s)", p.Name, got, raw, want, p.Default)}
}

func marshalSorted(values map[string]json.RawMessage) (json.RawMessage, error) {
	names := make([]string, 0, len(values))
	for n := range values {
		names = append(names, n)
	}
	sort.Strings(names)
	var b bytes.Buffer
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(n)
		b.Write(k)
		b.WriteByte(':')
		var c bytes.Buffer
		if err := json.Compact(&c, values[n]); err != nil {
			return nil, err
		}
		b.Write(c.Bytes())
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// Kwargs turns a job's input into keyword arguments for main.
func Kwargs(input json.RawMessage) ([]starlark.Tuple, error) {
	if len(bytes.TrimSpace(input)) == 0 {
		return nil, nil
	}
	v, err := FromJSON(input)
	if err != nil {
		return nil, fmt.Errorf("job input: %w", err)
	}
	d, ok := v.(*starlark.Dict)
	if !ok {
		return nil, fmt.Errorf("job input is a %s, not an object", v.Type())
	}
	kw := make([]starlark.Tuple, 0, d.Len())
	for _, item := range d.Items() {
		kw = append(kw, starlark.Tuple{item[0], item[1]})
	}
	return kw, nil
}
