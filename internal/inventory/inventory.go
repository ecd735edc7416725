// Package inventory reads Ansible inventories (INI and YAML) and selects
// hosts from them with Ansible's host patterns, so that operators can point
// drover at the inventory files they already keep.
//
// Variables merge as Ansible merges them: the all group, then groups from
// the shallowest to the deepest (ties broken by ansible_group_priority, then
// by name), then the host's own variables. A later value replaces an earlier
// one whole (Ansible's default hash_behaviour=replace).
//
// The package depends only on the standard library and yaml.v3; any layer
// may import it.
package inventory

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Host is one machine of the inventory with its merged variables.
type Host struct {
	Name string
	// Addr is ansible_host (or ansible_ssh_host), else Name.
	Addr string
	// Port is ansible_port (or ansible_ssh_port), 0 when unset.
	Port int
	// User is ansible_user (or ansible_ssh_user), empty when unset.
	User string
	// Groups lists every group the host belongs to, directly or through a
	// child group, in the order its variables were merged; it always
	// starts with "all".
	Groups []string
	// Vars holds the merged variables, ansible_* ones included.
	Vars map[string]any
}

// Inventory is a parsed inventory. It is immutable once parsed and safe
// for concurrent use.
type Inventory struct {
	file   string
	hosts  []*hostEntry
	byName map[string]*hostEntry
	groups map[string]*group
	order  []string // group names in declaration order
	// resolved holds each host's merged view, computed once at parse end.
	resolved []Host
}

type group struct {
	name     string
	vars     map[string]any
	varPos   map[string]string
	hosts    []*hostEntry
	children []*group
	parents  []*group
	depth    int
	// pos is where the group was first mentioned, for errors.
	pos string
}

type hostEntry struct {
	name   string
	index  int
	vars   map[string]any
	varPos map[string]string
	groups []*group // direct memberships
}

const (
	groupAll       = "all"
	groupUngrouped = "ungrouped"
)

func newInventory(file string) *Inventory {
	inv := &Inventory{file: file, byName: map[string]*hostEntry{}, groups: map[string]*group{}}
	all := inv.group(groupAll, "")
	ungrouped := inv.group(groupUngrouped, "")
	inv.addChild(all, ungrouped)
	return inv
}

// Load reads an inventory file. Files named *.yml, *.yaml or *.json are
// read as YAML (as Ansible's yaml plugin does); other files are read as
// INI unless their first meaningful line is a YAML mapping key.
func Load(path string) (*Inventory, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read inventory: %w", err)
	}
	return Parse(path, data)
}

// Parse parses inventory text; name is used for the format choice (by its
// extension) and in error messages.
func Parse(name string, data []byte) (*Inventory, error) {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yml", ".yaml", ".json":
		return ParseYAML(name, data)
	case ".ini", ".cfg":
		return ParseINI(name, data)
	}
	if looksLikeYAML(data) {
		return ParseYAML(name, data)
	}
	return ParseINI(name, data)
}

// looksLikeYAML catches a YAML inventory saved without an extension, which
// the INI parser would otherwise reject with a confusing host error.
func looksLikeYAML(data []byte) bool {
	for _, line := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(line)
		if t == "" || t[0] == '#' || t[0] == ';' || t == "---" {
			continue
		}
		if t[0] == '{' {
			return true
		}
		return !strings.HasPrefix(t, "[") && strings.HasSuffix(t, ":") && !strings.ContainsAny(t, " =")
	}
	return false
}

func (inv *Inventory) group(name, pos string) *group {
	g := inv.groups[name]
	if g == nil {
		g = &group{name: name, vars: map[string]any{}, varPos: map[string]string{}, pos: pos}
		inv.groups[name] = g
		inv.order = append(inv.order, name)
	}
	return g
}

func (inv *Inventory) host(name string) *hostEntry {
	h := inv.byName[name]
	if h == nil {
		h = &hostEntry{name: name, index: len(inv.hosts), vars: map[string]any{}, varPos: map[string]string{}}
		inv.byName[name] = h
		inv.hosts = append(inv.hosts, h)
	}
	return h
}

func (inv *Inventory) addHost(g *group, h *hostEntry) {
	for _, x := range h.groups {
		if x == g {
			return
		}
	}
	h.groups = append(h.groups, g)
	g.hosts = append(g.hosts, h)
}

// addChild links parent and child; it reports false when that would make
// a cycle.
func (inv *Inventory) addChild(parent, child *group) bool {
	if parent == child || isAncestor(child, parent) {
		return false
	}
	for _, c := range parent.children {
		if c == child {
			return true
		}
	}
	parent.children = append(parent.children, child)
	child.parents = append(child.parents, parent)
	return true
}

// isAncestor reports whether a is g or an ancestor of g.
func isAncestor(a, g *group) bool {
	if a == g {
		return true
	}
	for _, p := range g.parents {
		if isAncestor(a, p) {
			return true
		}
	}
	return false
}

// finish applies what Ansible's reconcile step does: every top-level group
// is a child of all, hosts in no group are in ungrouped, and group depths
// are known for the variable merge. It then resolves every host, so that a
// bad ansible_port is reported when the file is read.
func (inv *Inventory) finish() error {
	all, ungrouped := inv.groups[groupAll], inv.groups[groupUngrouped]
	for _, name := range inv.order {
		g := inv.groups[name]
		if g != all && len(g.parents) == 0 {
			inv.addChild(all, g)
		}
	}
	for _, h := range inv.hosts {
		other := false
		for _, g := range h.groups {
			if g != all && g != ungrouped {
				other = true
			}
		}
		if !other {
			inv.addHost(ungrouped, h)
			continue
		}
		if removeGroup(&h.groups, ungrouped) {
			for i, x := range ungrouped.hosts {
				if x == h {
					ungrouped.hosts = append(ungrouped.hosts[:i], ungrouped.hosts[i+1:]...)
					break
				}
			}
		}
	}
	// Depth is the longest path from all, as Ansible computes it when
	// children are added.
	var visit func(g *group, d int)
	visit = func(g *group, d int) {
		if d <= g.depth && g != all {
			return
		}
		g.depth = d
		for _, c := range g.children {
			visit(c, d+1)
		}
	}
	for _, c := range all.children {
		visit(c, 1)
	}
	inv.resolved = make([]Host, 0, len(inv.hosts))
	for _, h := range inv.hosts {
		x, err := inv.resolve(h)
		if err != nil {
			return err
		}
		inv.resolved = append(inv.resolved, x)
	}
	return nil
}

func removeGroup(list *[]*group, g *group) bool {
	for i, x := range *list {
		if x == g {
			*list = append((*list)[:i], (*list)[i+1:]...)
			return true
		}
	}
	return false
}

// Groups returns the group names in declaration order, all and ungrouped
// first.
func (inv *Inventory) Groups() []string { return append([]string(nil), inv.order...) }

// Hosts returns every host in inventory order.
func (inv *Inventory) Hosts() []Host {
	out := make([]Host, len(inv.hosts))
	for i := range inv.hosts {
		out[i] = inv.copyHost(i)
	}
	return out
}

// Host returns the named host, and false when the inventory has no such
// host.
func (inv *Inventory) Host(name string) (Host, bool) {
	h := inv.byName[name]
	if h == nil {
		return Host{}, false
	}
	return inv.copyHost(h.index), true
}

// copyHost hands out a copy so that callers may change what they get
// without changing the inventory that other goroutines read.
func (inv *Inventory) copyHost(i int) Host {
	h := inv.resolved[i]
	h.Groups = append([]string(nil), h.Groups...)
	vars := make(map[string]any, len(h.Vars))
	for k, v := range h.Vars {
		vars[k] = v
	}
	h.Vars = vars
	return h
}

// GroupHosts returns the hosts of a group, its children's included, in
// inventory order.
func (inv *Inventory) GroupHosts(name string) ([]string, bool) {
	g := inv.groups[name]
	if g == nil {
		return nil, false
	}
	var names []string
	for _, h := range inv.groupMembers(g) {
		names = append(names, h.name)
	}
	return names, true
}

func (inv *Inventory) groupMembers(g *group) []*hostEntry {
	seen := map[*hostEntry]bool{}
	var walk func(g *group)
	walk = func(g *group) {
		for _, h := range g.hosts {
			seen[h] = true
		}
		for _, c := range g.children {
			walk(c)
		}
	}
	walk(g)
	out := make([]*hostEntry, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].index < out[j].index })
	return out
}

// resolve merges a host's variables and extracts its connection fields.
func (inv *Inventory) resolve(h *hostEntry) (Host, error) {
	set := map[*group]bool{}
	var up func(g *group)
	up = func(g *group) {
		if set[g] {
			return
		}
		set[g] = true
		for _, p := range g.parents {
			up(p)
		}
	}
	for _, g := range h.groups {
		up(g)
	}
	up(inv.groups[groupAll])
	groups := make([]*group, 0, len(set))
	for g := range set {
		groups = append(groups, g)
	}
	sort.Slice(groups, func(i, j int) bool {
		a, b := groups[i], groups[j]
		if a.depth != b.depth {
			return a.depth < b.depth
		}
		if pa, pb := priority(a), priority(b); pa != pb {
			return pa < pb
		}
		return a.name < b.name
	})

	vars := map[string]any{}
	pos := map[string]string{}
	names := make([]string, 0, len(groups))
	for _, g := range groups {
		names = append(names, g.name)
		for k, v := range g.vars {
			vars[k] = v
			pos[k] = g.varPos[k]
		}
	}
	for k, v := range h.vars {
		vars[k] = v
		pos[k] = h.varPos[k]
	}

	out := Host{Name: h.name, Addr: h.name, Groups: names, Vars: vars}
	if v, ok := firstVar(vars, "ansible_host", "ansible_ssh_host"); ok {
		out.Addr = fmt.Sprint(v)
	}
	if v, ok := firstVar(vars, "ansible_user", "ansible_ssh_user"); ok {
		out.User = fmt.Sprint(v)
	}
	for _, k := range []string{"ansible_port", "ansible_ssh_port"} {
		v, ok := vars[k]
		if !ok {
			continue
		}
		p, err := toPort(v)
		if err != nil {
			return Host{}, fmt.Errorf("%s: host %s: %s: %w", pos[k], h.name, k, err)
		}
		out.Port = p
		break
	}
	return out, nil
}

func firstVar(vars map[string]any, keys ...string) (any, bool) {
	for _, k := range keys {
		if v, ok := vars[k]; ok && v != nil {
			return v, true
		}
	}
	return nil, false
}

func priority(g *group) int {
	v, ok := g.vars["ansible_group_priority"]
	if !ok {
		return 1
	}
	switch n := v.(type) {
	case int:
		return n
	case int64:
		return int(n)
	case float64:
		return int(n)
	case string:
		if p, err := strconv.Atoi(n); err == nil {
			return p
		}
	}
	return 1
}

func toPort(v any) (int, error) {
	var p int
	switch n := v.(type) {
	case int:
		p = n
	case int64:
		p = int(n)
	case uint64:
		p = int(n)
	case float64:
		p = int(n)
		if float64(p) != n {
			return 0, fmt.Errorf("port %v is not a whole number", n)
		}
	case string:
		var err error
		if p, err = strconv.Atoi(strings.TrimSpace(n)); err != nil {
			return 0, fmt.Errorf("port %q is not a number", n)
		}
	default:
		return 0, fmt.Errorf("port %v is not a number", v)
	}
	if p < 1 || p > 65535 {
		return 0, fmt.Errorf("port %d is out of range 1-65535", p)
	}
	return p, nil
}

func (inv *Inventory) where(line int) string { return fmt.Sprintf("%s:%d", inv.file, line) }
