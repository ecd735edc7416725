package inventory

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Limit selects hosts with an Ansible host pattern and returns them in
// inventory order.
//
// Terms are separated by commas (or, when there is no comma, by colons
// outside brackets). A term is a host or group name, "all" or "*", a
// shell-style wildcard (web*.example.com) matched against group and host
// names, or ~regex. "&term" keeps only hosts also in term; "!term"
// removes term's hosts. A subscript picks from a group: web[0], web[-1],
// web[0:2] (inclusive, as in Ansible). Plain terms are applied first, then
// intersections, then exclusions, whatever their order in the pattern.
//
// A plain name that matches nothing is an error, to catch typos, and so is
// a pattern that selects no host.
func (inv *Inventory) Limit(pattern string) ([]Host, error) {
	terms := splitPattern(pattern)
	if len(terms) == 0 {
		return nil, fmt.Errorf("empty host pattern")
	}
	var incl, inter, excl []string
	for _, t := range terms {
		switch t[0] {
		case '!':
			excl = append(excl, t[1:])
		case '&':
			inter = append(inter, t[1:])
		default:
			incl = append(incl, t)
		}
	}
	if len(incl) == 0 {
		incl = []string{groupAll}
	}
	selected := map[*hostEntry]bool{}
	for _, t := range incl {
		hs, err := inv.matchTerm(t, true)
		if err != nil {
			return nil, err
		}
		for _, h := range hs {
			selected[h] = true
		}
	}
	for _, t := range inter {
		hs, err := inv.matchTerm(t, true)
		if err != nil {
			return nil, err
		}
		keep := map[*hostEntry]bool{}
		for _, h := range hs {
			keep[h] = true
		}
		for h := range selected {
			if !keep[h] {
				delete(selected, h)
			}
		}
	}
	for _, t := range excl {
		hs, err := inv.matchTerm(t, false)
		if err != nil {
			return nil, err
		}
		for _, h := range hs {
			delete(selected, h)
		}
	}
	if len(selected) == 0 {
		return nil, fmt.Errorf("host pattern %q selects no host of inventory %s", pattern, inv.file)
	}
	idx := make([]int, 0, len(selected))
	for h := range selected {
		idx = append(idx, h.index)
	}
	sort.Ints(idx)
	out := make([]Host, len(idx))
	for i, j := range idx {
		out[i] = inv.copyHost(j)
	}
	return out, nil
}

// splitPattern splits on commas, or on colons when there is no comma
// (the older Ansible syntax), leaving colons inside [..] alone.
func splitPattern(p string) []string {
	sep := byte(',')
	if !strings.Contains(p, ",") {
		sep = ':'
	}
	var out []string
	depth, start := 0, 0
	add := func(s string) {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '[':
			depth++
		case ']':
			depth--
		case sep:
			if depth <= 0 {
				add(p[start:i])
				start = i + 1
			}
		}
	}
	add(p[start:])
	return out
}

var subscript = regexp.MustCompile(`^(.+)\[(-?\d+)(?:(:)(-?\d*))?\]$`)

// matchTerm resolves one term to hosts in inventory order. strict makes a
// plain name that matches nothing an error.
func (inv *Inventory) matchTerm(term string, strict bool) ([]*hostEntry, error) {
	if term == "" {
		return nil, fmt.Errorf("empty term in host pattern")
	}
	base, sub := term, ""
	if m := subscript.FindStringSubmatch(term); m != nil && !strings.HasPrefix(term, "~") {
		// web[0] is a subscript unless a host is literally named so.
		if _, ok := inv.byName[term]; !ok {
			base, sub = m[1], term[len(m[1]):]
		}
	}
	hosts, err := inv.matchBase(base, strict)
	if err != nil {
		return nil, err
	}
	if sub == "" {
		return hosts, nil
	}
	return applySubscript(hosts, term, sub)
}

func (inv *Inventory) matchBase(term string, strict bool) ([]*hostEntry, error) {
	if term == groupAll || term == "*" {
		return inv.hosts, nil
	}
	if h, ok := inv.byName[term]; ok {
		if g, ok := inv.groups[term]; ok {
			return mergeHosts(inv.groupMembers(g), []*hostEntry{h}), nil
		}
		return []*hostEntry{h}, nil
	}
	if g, ok := inv.groups[term]; ok {
		return inv.groupMembers(g), nil
	}
	var match func(string) bool
	switch {
	case strings.HasPrefix(term, "~"):
		re, err := regexp.Compile(term[1:])
		if err != nil {
			return nil, fmt.Errorf("host pattern term %q: %w", term, err)
		}
		match = re.MatchString
	case strings.ContainsAny(term, "*?["):
		if _, err := path.Match(term, ""); err != nil {
			return nil, fmt.Errorf("host pattern term %q: %w", term, err)
		}
		match = func(s string) bool { ok, _ := path.Match(term, s); return ok }
	default:
		if strict {
			return nil, fmt.Errorf("host pattern term %q names no host or group of inventory %s", term, inv.file)
		}
		return nil, nil
	}
	var out []*hostEntry
	for _, name := range inv.order {
		if match(name) {
			out = mergeHosts(out, inv.groupMembers(inv.groups[name]))
		}
	}
	var direct []*hostEntry
	for _, h := range inv.hosts {
		if match(h.name) {
			direct = append(direct, h)
		}
	}
	return mergeHosts(out, direct), nil
}

func mergeHosts(a, b []*hostEntry) []*hostEntry {
	seen := make(map[*hostEntry]bool, len(a)+len(b))
	var out []*hostEntry
	for _, list := range [][]*hostEntry{a, b} {
		for _, h := range list {
			if !seen[h] {
				seen[h] = true
				out = append(out, h)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].index < out[j].index })
	return out
}

func applySubscript(hosts []*hostEntry, term, sub string) ([]*hostEntry, error) {
	m := subscript.FindStringSubmatch("x" + sub)
	n := len(hosts)
	norm := func(i int) int {
		if i < 0 {
			i += n
		}
		return i
	}
	start, _ := strconv.Atoi(m[2])
	start = norm(start)
	if m[3] == "" {
		if start < 0 || start >= n {
			return nil, fmt.Errorf("host pattern term %q: index out of range (the group has %d hosts)", term, n)
		}
		return hosts[start : start+1], nil
	}
	end := n - 1
	if m[4] != "" {
		end, _ = strconv.Atoi(m[4])
		end = norm(end)
	}
	if start < 0 {
		start = 0
	}
	if end >= n {
		end = n - 1
	}
	if start > end {
		return nil, nil
	}
	return hosts[start : end+1], nil
}
