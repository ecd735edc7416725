package inventory

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

var (
	iniSection   = regexp.MustCompile(`^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:[#;].*)?$`)
	iniGroupName = regexp.MustCompile(`^([^:\]\s]+)\s*(?:#.*)?$`)
)

// ParseINI parses an inventory in Ansible's INI format.
func ParseINI(name string, data []byte) (*Inventory, error) {
	inv := newInventory(name)
	type pending struct {
		line   int
		parent string
		vars   bool
	}
	// A [g:children] or [g:vars] section may name a group declared further
	// down; what is still pending at the end is an error, as in Ansible.
	undeclared := map[string]pending{}
	var undeclaredOrder []string

	cur := inv.groups[groupUngrouped]
	state := "hosts"
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if lineNo == 1 {
			line = strings.TrimPrefix(line, "\ufeff")
		}
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		at := inv.where(lineNo)
		if line[0] == '[' {
			m := iniSection.FindStringSubmatch(line)
			if m == nil {
				return nil, fmt.Errorf("%s: invalid section header %q (want [group], [group:vars] or [group:children])", at, line)
			}
			gname, kind := m[1], m[2]
			switch kind {
			case "":
				state = "hosts"
			case "vars", "children":
				state = kind
			default:
				return nil, fmt.Errorf("%s: section [%s:%s] has unknown type %q (want vars or children)", at, gname, kind, kind)
			}
			if _, ok := undeclared[gname]; ok && state != "vars" {
				delete(undeclared, gname)
			}
			if _, ok := inv.groups[gname]; !ok && state == "vars" {
				undeclared[gname] = pending{line: lineNo, parent: gname, vars: true}
				undeclaredOrder = append(undeclaredOrder, gname)
			}
			cur = inv.group(gname, at)
			continue
		}
		switch state {
		case "hosts":
			if err := inv.iniHostLine(cur, line, lineNo); err != nil {
				return nil, err
			}
		case "vars":
			k, v, ok := strings.Cut(line, "=")
			k = strings.TrimSpace(k)
			if !ok || k == "" {
				return nil, fmt.Errorf("%s: expected key=value in [%s:vars], got %q", at, cur.name, line)
			}
			cur.vars[k] = parseValue(strings.TrimSpace(v))
			cur.varPos[k] = at
		case "children":
			m := iniGroupName.FindStringSubmatch(line)
			if m == nil {
				return nil, fmt.Errorf("%s: %q is not a valid group name in [%s:children]", at, line, cur.name)
			}
			child, exists := inv.groups[m[1]]
			if !exists {
				if _, ok := undeclared[m[1]]; !ok {
					undeclared[m[1]] = pending{line: lineNo, parent: cur.name}
					undeclaredOrder = append(undeclaredOrder, m[1])
				}
				child = inv.group(m[1], at)
			}
			if !inv.addChild(cur, child) {
				return nil, fmt.Errorf("%s: group %s cannot be a child of %s: that makes a cycle", at, child.name, cur.name)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	for _, g := range undeclaredOrder {
		p, ok := undeclared[g]
		if !ok {
			continue
		}
		if p.vars {
			return nil, fmt.Errorf("%s: section [%s:vars] is for a group that is never declared", inv.where(p.line), g)
		}
		return nil, fmt.Errorf("%s: section [%s:children] includes group %s, which is never declared (add a [%s] section)", inv.where(p.line), p.parent, g, g)
	}
	if err := inv.finish(); err != nil {
		return nil, err
	}
	return inv, nil
}

// iniHostLine handles "pattern k=v k2=v2" inside a host section.
func (inv *Inventory) iniHostLine(g *group, line string, lineNo int) error {
	at := inv.where(lineNo)
	tokens, err := shlexSplit(line)
	if err != nil {
		return fmt.Errorf("%s: %w", at, err)
	}
	if len(tokens) == 0 {
		return nil
	}
	names, port, err := expandHostPattern(tokens[0])
	if err != nil {
		return fmt.Errorf("%s: %w", at, err)
	}
	vars := map[string]any{}
	var keys []string
	for _, t := range tokens[1:] {
		k, v, ok := strings.Cut(t, "=")
		if !ok || k == "" {
			return fmt.Errorf("%s: expected key=value host variable after %s, got %q", at, tokens[0], t)
		}
		vars[k] = parseValue(v)
		keys = append(keys, k)
	}
	if port != 0 {
		vars["ansible_port"] = port
		keys = append(keys, "ansible_port")
	}
	for _, n := range names {
		h := inv.host(n)
		inv.addHost(g, h)
		for _, k := range keys {
			h.vars[k] = vars[k]
			h.varPos[k] = at
		}
	}
	return nil
}

// shlexSplit splits like Python's shlex.split(line, comments=True), which
// Ansible uses for host lines: quotes group words and # starts a comment
// at the beginning of a word.
func shlexSplit(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			return out, nil
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("no closing quotation in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("no closing quotation in %q", s)
			}
			inWord = true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

var (
	pyInt   = regexp.MustCompile(`^[-+]?(0|[1-9][0-9_]*|0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+)$`)
	pyFloat = regexp.MustCompile(`^[-+]?([0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*|[0-9][0-9_]*)([eE][-+]?[0-9]+)?$`)
)

// parseValue mirrors Ansible's INI value handling, which runs Python's
// ast.literal_eval and keeps the text when that fails: so "8080" is a
// number, "True" a bool, "0755" and "yes" stay strings.
func parseValue(v string) any {
	switch v {
	case "True":
		return true
	case "False":
		return false
	case "None":
		return nil
	}
	if pyInt.MatchString(v) {
		if n, err := strconv.ParseInt(strings.ReplaceAll(v, "_", ""), 0, 64); err == nil {
			return int(n)
		}
	}
	if pyFloat.MatchString(v) && strings.ContainsAny(v, ".eE") {
		if f, err := strconv.ParseFloat(strings.ReplaceAll(v, "_", ""), 64); err == nil {
			return f
		}
	}
	if len(v) >= 2 && (v[0] == '\'' || v[0] == '"') && v[len(v)-1] == v[0] {
		if s, ok := unquotePython(v); ok {
			return s
		}
	}
	if len(v) >= 2 && (v[0] == '[' && v[len(v)-1] == ']' || v[0] == '{' && v[len(v)-1] == '}') {
		// A YAML flow collection reads Python list and dict literals of
		// strings and numbers the same way.
		var x any
		if err := yaml.Unmarshal([]byte(v), &x); err == nil {
			return normalize(x)
		}
	}
	return v
}

func unquotePython(v string) (string, bool) {
	q := v[0]
	body := v[1 : len(v)-1]
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c == q {
			return "", false
		}
		if c != '\\' || i+1 == len(body) {
			b.WriteByte(c)
			continue
		}
		i++
		switch body[i] {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case '\\', '\'', '"':
			b.WriteByte(body[i])
		default:
			b.WriteByte('\\')
			b.WriteByte(body[i])
		}
	}
	return b.String(), true
}

// normalize turns what yaml.v3 decodes into the JSON-shaped values the
// rest of drover passes around (string keys only).
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalize(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = normalize(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = normalize(e)
		}
		return x
	default:
		return v
	}
}

// expandHostPattern expands "web[01:20].example.com:2222" into its host
// names and port (0 when none is given).
func expandHostPattern(p string) ([]string, int, error) {
	name, port, err := splitHostPort(p)
	if err != nil {
		return nil, 0, err
	}
	names, err := expandRanges(name)
	if err != nil {
		return nil, 0, err
	}
	return names, port, nil
}

func splitHostPort(p string) (string, int, error) {
	if strings.HasPrefix(p, "[") && strings.Contains(p, "]:") && !strings.Contains(p[1:strings.Index(p, "]")], "[") {
		// [2001:db8::1]:2222
		i := strings.Index(p, "]:")
		port, err := strconv.Atoi(p[i+2:])
		if err != nil || port < 1 || port > 65535 {
			return "", 0, fmt.Errorf("host %q has an invalid port", p)
		}
		return p[1:i], port, nil
	}
	// Colons inside a range are not a port separator.
	depth, last := 0, -1
	count := 0
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '[':
			depth++
		case ']':
			depth--
		case ':':
			if depth == 0 {
				last = i
				count++
			}
		}
	}
	if count != 1 {
		// No port, or a bare IPv6 address.
		return p, 0, nil
	}
	port, err := strconv.Atoi(p[last+1:])
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("host %q has an invalid port %q", p, p[last+1:])
	}
	return p[:last], port, nil
}

// expandRanges expands the first [a:b] or [a:b:stride] range in name,
// then the rest recursively, as Ansible's expand_hostname_range does.
func expandRanges(name string) ([]string, error) {
	open := strings.IndexByte(name, '[')
	if open < 0 {
		if strings.IndexByte(name, ']') >= 0 {
			return nil, fmt.Errorf("host %q has an unmatched ]", name)
		}
		return []string{name}, nil
	}
	closing := strings.IndexByte(name[open:], ']')
	if closing < 0 {
		return nil, fmt.Errorf("host %q has an unmatched [", name)
	}
	closing += open
	head, spec, tail := name[:open], name[open+1:closing], name[closing+1:]
	parts := strings.Split(spec, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, fmt.Errorf("host range [%s] in %q: want [start:end] or [start:end:stride]", spec, name)
	}
	beg, end := parts[0], parts[1]
	stride := 1
	if len(parts) == 3 {
		s, err := strconv.Atoi(parts[2])
		if err != nil || s < 1 {
			return nil, fmt.Errorf("host range [%s] in %q: stride must be a positive number", spec, name)
		}
		stride = s
	}
	if beg == "" {
		beg = "0"
	}
	if end == "" {
		return nil, fmt.Errorf("host range [%s] in %q has no end", spec, name)
	}
	var items []string
	if isDigits(beg) && isDigits(end) {
		width := 0
		if len(beg) > 1 && beg[0] == '0' {
			if len(beg) != len(end) {
				return nil, fmt.Errorf("host range [%s] in %q: zero-padded start and end must have the same width", spec, name)
			}
			width = len(beg)
		}
		b, _ := strconv.Atoi(beg)
		e, _ := strconv.Atoi(end)
		if b > e {
			return nil, fmt.Errorf("host range [%s] in %q: start is after end", spec, name)
		}
		if (e-b)/stride > 100000 {
			return nil, fmt.Errorf("host range [%s] in %q is too large", spec, name)
		}
		for i := b; i <= e; i += stride {
			items = append(items, fmt.Sprintf("%0*d", width, i))
		}
	} else if len(beg) == 1 && len(end) == 1 && isLetter(beg[0]) && isLetter(end[0]) {
		if beg[0] > end[0] {
			return nil, fmt.Errorf("host range [%s] in %q: start is after end", spec, name)
		}
		for c := int(beg[0]); c <= int(end[0]); c += stride {
			items = append(items, string(rune(c)))
		}
	} else {
		return nil, fmt.Errorf("host range [%s] in %q: want numbers or single letters", spec, name)
	}
	rest, err := expandRanges(tail)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(items)*len(rest))
	for _, it := range items {
		for _, r := range rest {
			out = append(out, head+it+r)
		}
	}
	return out, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
