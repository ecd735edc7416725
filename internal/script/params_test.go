package script

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"go.starlark.net/starlark"

	"github.com/drover/drover/internal/job"
)

// signatureOf compiles a one-file workflow and returns main's signature.
func signatureOf(t *testing.T, text string) Signature {
	t.Helper()
	src := &job.Source{Entry: "wf.star", Files: map[string]string{"wf.star": text}}
	src.Seal()
	prog, err := Compile(src)
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	globals, err := prog.Init(&starlark.Thread{Name: "test"}, nil)
	if err != nil {
		t.Fatalf("init: %v", err)
	}
	fn, err := Main(globals, src.Entry)
	if err != nil {
		t.Fatalf("main: %v", err)
	}
	return SignatureOf(fn)
}

// boundKwargs binds and returns main's keyword arguments by name, as the
// engine passes them.
func boundKwargs(t *testing.T, sig Signature, input string, pairs ...string) map[string]starlark.Value {
	t.Helper()
	raw, err := sig.Bind(json.RawMessage(input), pairs)
	if err != nil {
		t.Fatalf("Bind(%s, %q): %v", input, pairs, err)
	}
	kw, err := Kwargs(raw)
	if err != nil {
		t.Fatalf("Kwargs(%s): %v", raw, err)
	}
	out := map[string]starlark.Value{}
	for _, kv := range kw {
		out[string(kv[0].(starlark.String))] = kv[1]
	}
	return out
}

const paramsWF = `
def main(hosts, label, batch=10, reboot=True, ratio=0.5, name="web", tags=["a"], opts={"x": 1}, extra=None):
    pass
`

func TestBindCoercesByDefaultType(t *testing.T) {
	sig := signatureOf(t, paramsWF)
	if got, want := len(sig.Params), 9; got != want {
		t.Fatalf("signature has %d params, want %d: %s", got, want, sig)
	}
	kw := boundKwargs(t, sig, "",
		`hosts=["h1","h2"]`, // no default: JSON
		"label=hello",       // no default, not JSON: a string
		"batch=25",
		"reboot=false",
		"ratio=0.75",
		"name=5", // string default: the text, even when it reads as a number
		`tags=["x","y"]`,
		`opts={"y": 2}`,
		"extra=7", // default None: JSON when it parses
	)
	check := func(name, typ, repr string) {
		t.Helper()
		v, ok := kw[name]
		if !ok {
			t.Errorf("%s not bound", name)
			return
		}
		if v.Type() != typ || v.String() != repr {
			t.Errorf("%s = %s %s, want %s %s", name, v.Type(), v, typ, repr)
		}
	}
	check("hosts", "list", `["h1", "h2"]`)
	check("label", "string", `"hello"`)
	check("batch", "int", "25")
	check("reboot", "bool", "False")
	check("ratio", "float", "0.75")
	check("name", "string", `"5"`)
	check("tags", "list", `["x", "y"]`)
	check("opts", "dict", `{"y": 2}`)
	check("extra", "int", "7")
}

func TestBindParamWithoutDefaultTakesJSONElseString(t *testing.T) {
	sig := signatureOf(t, "def main(v):\n    pass\n")
	for _, tc := range []struct{ text, typ, repr string }{
		{"5", "int", "5"},
		{"1.5", "float", "1.5"},
		{"true", "bool", "True"},
		{"null", "NoneType", "None"},
		{`"5"`, "string", `"5"`},
		{`{"b": 1, "a": 2}`, "dict", `{"b": 1, "a": 2}`},
		{"web1", "string", `"web1"`},
		{"web1,web2", "string", `"web1,web2"`},
		{"", "string", `""`},
		{"a=b", "string", `"a=b"`}, // only the first '=' separates the name
	} {
		kw := boundKwargs(t, sig, "", "v="+tc.text)
		if v := kw["v"]; v.Type() != tc.typ || v.String() != tc.repr {
			t.Errorf("-p v=%s: got %s %s, want %s %s", tc.text, v.Type(), v, tc.typ, tc.repr)
		}
	}
}

// A float parameter given an integral value must still be a float in the
// job: -p takes the type of the parameter's default (SPEC 2).
func TestBindFloatDefaultStaysFloat(t *testing.T) {
	sig := signatureOf(t, "def main(ratio=0.5):\n    pass\n")
	t.Run("-p", func(t *testing.T) {
		kw := boundKwargs(t, sig, "", "ratio=2")
		if v := kw["ratio"]; v.Type() != "float" {
			t.Errorf("-p ratio=2 for main(ratio=0.5): main gets %s %s, want float 2.0", v.Type(), v)
		}
	})
	t.Run("--input", func(t *testing.T) {
		kw := boundKwargs(t, sig, `{"ratio": 2}`)
		if v := kw["ratio"]; v.Type() != "float" {
			t.Errorf(`--input {"ratio": 2} for main(ratio=0.5): main gets %s %s, want float 2.0`, v.Type(), v)
		}
	})
}

func TestBindInput(t *testing.T) {
	sig := signatureOf(t, paramsWF)
	kw := boundKwargs(t, sig, `{"hosts": ["a"], "label": "x", "batch": 3, "tags": [], "opts": {"k": [1, 2]}}`, "batch=4")
	if v := kw["batch"]; v.String() != "4" {
		t.Errorf("-p must win over --input: batch = %s", v)
	}
	if v := kw["opts"]; v.String() != `{"k": [1, 2]}` {
		t.Errorf("opts = %s", v)
	}
	if _, ok := kw["reboot"]; ok {
		t.Errorf("a parameter not given must not be bound (main's default applies): %v", kw)
	}
	// The stored input is canonical: sorted keys, compact.
	raw, err := sig.Bind(json.RawMessage(`{ "label" : "x",  "hosts":[ "a" ] }`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(raw), `{"hosts":["a"],"label":"x"}`; got != want {
		t.Errorf("input = %s, want %s", got, want)
	}
}

func TestBindErrors(t *testing.T) {
	sig := signatureOf(t, paramsWF)
	req := []string{"hosts=[]", "label=x"}
	for _, tc := range []struct {
		name  string
		input string
		pairs []string
		want  []string // substrings of the message
	}{
		{"unknown -p", "", append(req, "bacth=3"), []string{`unknown parameter "bacth"`, "main(hosts, label, batch=10"}},
		{"unknown input", `{"hosts": [], "label": "x", "nope": 1}`, nil, []string{`unknown parameter "nope"`}},
		{"missing", "", []string{"label=x"}, []string{"missing parameter hosts", "-p hosts="}},
		{"missing two", "", nil, []string{"missing parameter hosts, label"}},
		{"int", "", append(req, "batch=ten"), []string{"batch", "an int"}},
		{"int from float", "", append(req, "batch=1.5"), []string{"batch", "an int"}},
		{"bool", "", append(req, "reboot=yes"), []string{"reboot", "a bool"}},
		{"float", "", append(req, "ratio=half"), []string{"ratio", "a float"}},
		{"list not json", "", append(req, "tags=a,b"), []string{"tags", "list as JSON"}},
		{"list given dict", "", append(req, `tags={"a": 1}`), []string{"tags", "got dict", "want list"}},
		{"dict given list", "", append(req, `opts=[1]`), []string{"opts", "got list", "want dict"}},
		{"no =", "", append(req, "batch"), []string{"-p batch: want key=value"}},
		{"input not object", `[1, 2]`, nil, []string{"--input must be a JSON object"}},
		{"input wrong type", `{"hosts": [], "label": "x", "batch": "ten"}`, nil, []string{"batch", "got string", "want int"}},
		{"input null for int", `{"hosts": [], "label": "x", "batch": null}`, nil, []string{"batch", "want int"}},
		{"input bool for int", `{"hosts": [], "label": "x", "batch": true}`, nil, []string{"batch", "want int"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sig.Bind(json.RawMessage(tc.input), tc.pairs)
			if err == nil {
				t.Fatalf("Bind(%s, %q) succeeded, want an error", tc.input, tc.pairs)
			}
			var pe *ParamError
			if !errors.As(err, &pe) {
				t.Errorf("error is a %T, want *ParamError (a usage error): %v", err, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestBindAcceptsIntForFloat(t *testing.T) {
	sig := signatureOf(t, "def main(ratio=0.5, n=1):\n    pass\n")
	if _, err := sig.Bind(json.RawMessage(`{"ratio": 1}`), nil); err != nil {
		t.Errorf("an int for a float parameter is fine: %v", err)
	}
	if _, err := sig.Bind(json.RawMessage(`{"n": 1.5}`), nil); err == nil {
		t.Errorf("a float for an int parameter must be refused")
	}
}

func TestSignatureIgnoresVarargs(t *testing.T) {
	sig := signatureOf(t, "def main(a, b=2, *args, **kwargs):\n    pass\n")
	if got := sig.String(); got != "main(a, b=2)" {
		t.Errorf("signature = %s", got)
	}
}
