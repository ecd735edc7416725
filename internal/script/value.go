package script

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"sort"
	"strconv"
	"strings"

	"go.starlark.net/starlark"
	"go.starlark.net/starlarkstruct"
)

// ToJSON encodes a Starlark value for the journal and the output stream:
// None, bools, ints, floats, strings, lists, tuples, dicts with string
// keys and structs.
func ToJSON(v starlark.Value) (json.RawMessage, error) {
	x, err := ToGo(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(x)
}

// ToGo converts a Starlark value to plain Go values that encoding/json
// can encode.
func ToGo(v starlark.Value) (any, error) {
	switch v := v.(type) {
	case starlark.NoneType:
		return nil, nil
	case starlark.Bool:
		return bool(v), nil
	case starlark.Int:
		if i, ok := v.Int64(); ok {
			return i, nil
		}
		return json.Number(v.String()), nil
	case starlark.Float:
		f := float64(v)
		if math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, fmt.Errorf("cannot store %v: JSON has no infinities or NaN", f)
		}
		return json.Number(floatJSON(f)), nil
	case starlark.String:
		return string(v), nil
	case starlark.Bytes:
		return string(v), nil
	case *starlark.List:
		out := make([]any, v.Len())
		for i := range out {
			x, err := ToGo(v.Index(i))
			if err != nil {
				return nil, err
			}
			out[i] = x
		}
		return out, nil
	case starlark.Tuple:
		out := make([]any, len(v))
		for i, e := range v {
			x, err := ToGo(e)
			if err != nil {
				return nil, err
			}
			out[i] = x
		}
		return out, nil
	case *starlark.Dict:
		out := orderedMap{}
		for _, kv := range v.Items() {
			k, ok := starlark.AsString(kv[0])
			if !ok {
				return nil, fmt.Errorf("cannot store a dict with %s keys: keys must be strings", kv[0].Type())
			}
			x, err := ToGo(kv[1])
			if err != nil {
				return nil, err
			}
			out = append(out, kv2{k, x})
		}
		return out, nil
	case *starlarkstruct.Struct:
		names := v.AttrNames()
		out := orderedMap{}
		for _, n := range names {
			a, err := v.Attr(n)
			if err != nil {
				return nil, err
			}
			x, err := ToGo(a)
			if err != nil {
				return nil, err
			}
			out = append(out, kv2{n, x})
		}
		return out, nil
	}
	return nil, fmt.Errorf("cannot store a value of type %s (use strings, numbers, lists, dicts or structs)", v.Type())
}

type kv2 struct {
	k string
	v any
}

// orderedMap keeps a dict's insertion order in JSON, so replay and output
// show keys as the script wrote them.
type orderedMap []kv2

func (m orderedMap) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, e := range m {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(e.k)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(e.v)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// floatJSON writes a float so that it reads back as a float: 2 as 2.0.
func floatJSON(f float64) json.RawMessage {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eE") {
		s += ".0"
	}
	return json.RawMessage(s)
}

// FromJSON decodes JSON into Starlark values: objects become dicts (keys
// in document order), arrays lists, numbers ints when integral.
func FromJSON(data []byte) (starlark.Value, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return starlark.None, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeValue(dec)
	if err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("unexpected data after JSON value")
	}
	return v, nil
}

func decodeValue(dec *json.Decoder) (starlark.Value, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			d := starlark.NewDict(4)
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string)
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				if err := d.SetKey(starlark.String(k), v); err != nil {
					return nil, err
				}
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return d, nil
		case '[':
			var elems []starlark.Value
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				elems = append(elems, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return starlark.NewList(elems), nil
		}
	case nil:
		return starlark.None, nil
	case bool:
		return starlark.Bool(t), nil
	case string:
		return starlark.String(t), nil
	case json.Number:
		return numberValue(t)
	}
	return nil, fmt.Errorf("unexpected JSON token %v", tok)
}

func numberValue(n json.Number) (starlark.Value, error) {
	if i, err := n.Int64(); err == nil {
		return starlark.MakeInt64(i), nil
	}
	if bi, ok := new(big.Int).SetString(string(n), 10); ok {
		return starlark.MakeBigInt(bi), nil
	}
	f, err := n.Float64()
	if err != nil {
		return nil, err
	}
	return starlark.Float(f), nil
}

// Struct builds a struct value with fields in name order.
func Struct(fields map[string]starlark.Value) *starlarkstruct.Struct {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	d := make(starlark.StringDict, len(fields))
	for _, n := range names {
		d[n] = fields[n]
	}
	return starlarkstruct.FromStringDict(starlarkstruct.Default, d)
}
