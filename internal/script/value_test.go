package script

import (
	"math/big"
	"strings"
	"testing"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
)

// evalExpr evaluates a Starlark expression.
func evalExpr(t *testing.T, expr string) starlark.Value {
	t.Helper()
	v, err := starlark.Eval(&starlark.Thread{Name: "test"}, "expr", expr, starlark.StringDict{
		"struct": starlark.NewBuiltin("struct", starlarkstruct.Make),
	})
	if err != nil {
		t.Fatalf("eval %s: %v", expr, err)
	}
	return v
}

func TestToJSON(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{"None", "null"},
		{"True", "true"},
		{"42", "42"},
		{"-7", "-7"},
		{"1.5", "1.5"},
		{`"a\"b"`, `"a\"b"`},
		{`b"raw"`, `"raw"`},
		{"[1, [2, 3]]", "[1,[2,3]]"},
		{"(1, 'x')", `[1,"x"]`},
		{"{}", "{}"},
		{`{"zeta": 1, "alpha": 2, "mid": {"z": 0, "a": 1}}`, `{"zeta":1,"alpha":2,"mid":{"z":0,"a":1}}`},
		{`struct(b=1, a="x")`, `{"a":"x","b":1}`},
		{"1 << 70", "1180591620717411303424"},
		{"-(1 << 70)", "-1180591620717411303424"},
	} {
		raw, err := ToJSON(evalExpr(t, tc.expr))
		if err != nil {
			t.Errorf("ToJSON(%s): %v", tc.expr, err)
			continue
		}
		if string(raw) != tc.want {
			t.Errorf("ToJSON(%s) = %s, want %s", tc.expr, raw, tc.want)
		}
	}
}

func TestToJSONRefuses(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{`{1: "a"}`, "keys must be strings"},
		{`float("nan")`, "NaN"},
		{`float("inf")`, "infinities"},
		{`[float("-inf")]`, "infinities"},
		{`set([1])`, "set"},
		{`lambda: 1`, "function"},
		{`{"k": range(3)}`, "range"},
	} {
		_, err := ToJSON(evalExpr(t, tc.expr))
		if err == nil {
			t.Errorf("ToJSON(%s) succeeded, want an error", tc.expr)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ToJSON(%s): error %q does not mention %q", tc.expr, err, tc.want)
		}
	}
}

func TestFromJSON(t *testing.T) {
	for _, tc := range []struct{ json, typ, repr string }{
		{"", "NoneType", "None"},
		{"  ", "NoneType", "None"},
		{"null", "NoneType", "None"},
		{"false", "bool", "False"},
		{"12", "int", "12"},
		{"-12", "int", "-12"},
		{"12.0", "float", "12.0"},
		{"1e3", "float", "1000.0"},
		{"0.25", "float", "0.25"},
		{`"x"`, "string", `"x"`},
		{`[1, "a", null]`, "list", `[1, "a", None]`},
		{`{"z": 1, "a": {"y": 2, "b": 3}}`, "dict", `{"z": 1, "a": {"y": 2, "b": 3}}`},
		{"123456789012345678901234567890", "int", "123456789012345678901234567890"},
		{"-123456789012345678901234567890", "int", "-123456789012345678901234567890"},
		{"9223372036854775807", "int", "9223372036854775807"},
		{"9223372036854775808", "int", "9223372036854775808"},
	} {
		v, err := FromJSON([]byte(tc.json))
		if err != nil {
			t.Errorf("FromJSON(%s): %v", tc.json, err)
			continue
		}
		if v.Type() != tc.typ || v.String() != tc.repr {
			t.Errorf("FromJSON(%s) = %s %s, want %s %s", tc.json, v.Type(), v, tc.typ, tc.repr)
		}
	}
	for _, bad := range []string{"{", "[1,", `{"a" 1}`, "1 2", "nul"} {
		if _, err := FromJSON([]byte(bad)); err == nil {
			t.Errorf("FromJSON(%s) succeeded, want an error", bad)
		}
	}
}

// Values go through the journal as JSON: what a step returned must come
// back the same on replay, dict order and big ints included.
func TestJSONRoundTrip(t *testing.T) {
	for _, expr := range []string{
		`None`, `True`, `0`, `-3`, `0.1`, `1.5e300`, `""`, `"ünïcode ✓ \n\t"`,
		`1 << 64`, `-(1 << 100)`, `(1 << 63) - 1`, `-(1 << 63)`,
		`[1, [2, [3, []]], {}]`,
		`{"b": 1, "a": 2, "c": {"z": [1, 2], "y": None}}`,
		`{"k%d" % i: i for i in range(50)}`,
		`{"n": 123456789012345678901234567890, "l": [1 << 80]}`,
	} {
		v := evalExpr(t, expr)
		raw, err := ToJSON(v)
		if err != nil {
			t.Errorf("ToJSON(%s): %v", expr, err)
			continue
		}
		back, err := FromJSON(raw)
		if err != nil {
			t.Errorf("FromJSON(ToJSON(%s) = %s): %v", expr, raw, err)
			continue
		}
		if back.String() != v.String() {
			t.Errorf("round trip of %s: got %s (JSON %s)", expr, back, raw)
		}
		again, err := ToJSON(back)
		if err != nil || string(again) != string(raw) {
			t.Errorf("second encoding of %s = %s, %v; want %s", expr, again, err, raw)
		}
	}
	// Dict order survives both ways, key by key.
	d, _ := FromJSON([]byte(`{"c": 1, "a": 2, "b": 3}`))
	var keys []string
	for _, k := range d.(*starlark.Dict).Keys() {
		keys = append(keys, string(k.(starlark.String)))
	}
	if strings.Join(keys, ",") != "c,a,b" {
		t.Errorf("dict keys in order %v, want c,a,b", keys)
	}
	// A big int decodes to the exact value.
	v, _ := FromJSON([]byte("340282366920938463463374607431768211457"))
	want, _ := new(big.Int).SetString("340282366920938463463374607431768211457", 10)
	if got := v.(starlark.Int).BigInt(); got.Cmp(want) != 0 {
		t.Errorf("big int = %s, want %s", got, want)
	}
}

// A float that happens to be integral is still a float after the journal
// (a wait() default, a parameter, a signal's payload built by a script).
func TestJSONRoundTripIntegralFloat(t *testing.T) {
	for _, f := range []float64{2, 0, -3, 1e6} {
		v := starlark.Float(f)
		raw, err := ToJSON(v)
		if err != nil {
			t.Fatal(err)
		}
		back, err := FromJSON(raw)
		if err != nil {
			t.Fatal(err)
		}
		if back.Type() != "float" {
			t.Errorf("float %v is stored as %s and comes back as %s %s", f, raw, back.Type(), back)
		}
	}
}

func TestKwargs(t *testing.T) {
	kw, err := Kwargs([]byte(`{"b": 1, "a": [true]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(kw) != 2 || kw[0][0].String() != `"b"` || kw[1][1].String() != "[True]" {
		t.Errorf("kwargs = %v", kw)
	}
	if kw, err := Kwargs(nil); err != nil || kw != nil {
		t.Errorf("Kwargs(nil) = %v, %v", kw, err)
	}
	if _, err := Kwargs([]byte(`[1]`)); err == nil || !strings.Contains(err.Error(), "not an object") {
		t.Errorf("Kwargs([1]) error = %v", err)
	}
}

func TestStructFieldsSorted(t *testing.T) {
	s := Struct(map[string]starlark.Value{"stdout": starlark.String("x"), "code": starlark.MakeInt(0)})
	raw, err := ToJSON(s)
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != `{"code":0,"stdout":"x"}` {
		t.Errorf("struct JSON = %s", raw)
	}
}
