package inventory

import (
	"errors"
	"fmt"
	"regexp"

	"gopkg.in/yaml.v3"
)

var (
	yamlLine  = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	errSyntax = errors.New("invalid YAML")
)

// ParseYAML parses an inventory in Ansible's YAML format:
//
//	all:
//	  hosts: {web1: {ansible_host: 10.0.0.5}}
//	  vars: {ntp: 10.0.0.1}
//	  children:
//	    db: {hosts: {db[1:3]: }}
//
// Every top-level key is a group, as in Ansible's yaml plugin. JSON is
// YAML, so the same parser reads JSON inventories.
func ParseYAML(name string, data []byte) (*Inventory, error) {
	inv := newInventory(name)
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// yaml.v3 says "yaml: line N: ..."; say file:N like every other
		// inventory error.
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			return nil, fmt.Errorf("%s:%s: %s: %w", name, m[1], m[2], errSyntax)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		if err := inv.finish(); err != nil {
			return nil, err
		}
		return inv, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		if err := inv.finish(); err != nil {
			return nil, err
		}
		return inv, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s: an inventory must be a mapping of group names (such as all:), not %s", inv.where(root.Line), kindName(root))
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		g := inv.group(k.Value, inv.where(k.Line))
		if err := inv.yamlGroup(g, v); err != nil {
			return nil, err
		}
	}
	if err := inv.finish(); err != nil {
		return nil, err
	}
	return inv, nil
}

func (inv *Inventory) yamlGroup(g *group, n *yaml.Node) error {
	n = resolveAlias(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("%s: group %s must be a mapping with hosts, vars or children, not %s", inv.where(n.Line), g.name, kindName(n))
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		switch k.Value {
		case "hosts":
			if isNull(v) {
				continue
			}
			if v.Kind != yaml.MappingNode {
				return fmt.Errorf("%s: hosts of group %s must be a mapping of host names, not %s", inv.where(v.Line), g.name, kindName(v))
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				if err := inv.yamlHost(g, v.Content[j], resolveAlias(v.Content[j+1])); err != nil {
					return err
				}
			}
		case "vars":
			if isNull(v) {
				continue
			}
			vars, pos, err := inv.yamlVars(v, "vars of group "+g.name)
			if err != nil {
				return err
			}
			for key, val := range vars {
				g.vars[key] = val
				g.varPos[key] = pos[key]
			}
		case "children":
			if isNull(v) {
				continue
			}
			if v.Kind != yaml.MappingNode {
				return fmt.Errorf("%s: children of group %s must be a mapping of group names, not %s", inv.where(v.Line), g.name, kindName(v))
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				ck := v.Content[j]
				child := inv.group(ck.Value, inv.where(ck.Line))
				if !inv.addChild(g, child) {
					return fmt.Errorf("%s: group %s cannot be a child of %s: that makes a cycle", inv.where(ck.Line), child.name, g.name)
				}
				if err := inv.yamlGroup(child, v.Content[j+1]); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("%s: group %s has unexpected key %q (want hosts, vars or children)", inv.where(k.Line), g.name, k.Value)
		}
	}
	return nil
}

func (inv *Inventory) yamlHost(g *group, k, v *yaml.Node) error {
	at := inv.where(k.Line)
	names, port, err := expandHostPattern(k.Value)
	if err != nil {
		return fmt.Errorf("%s: %w", at, err)
	}
	vars, pos := map[string]any{}, map[string]string{}
	if !isNull(v) {
		if vars, pos, err = inv.yamlVars(v, "variables of host "+k.Value); err != nil {
			return err
		}
	}
	if port != 0 {
		vars["ansible_port"] = port
		pos["ansible_port"] = at
	}
	for _, n := range names {
		h := inv.host(n)
		inv.addHost(g, h)
		for key, val := range vars {
			h.vars[key] = val
			h.varPos[key] = pos[key]
		}
	}
	return nil
}

// yamlVars decodes a mapping of variables and says on which line each
// one is, for errors about their values.
func (inv *Inventory) yamlVars(v *yaml.Node, what string) (map[string]any, map[string]string, error) {
	if v.Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("%s: %s must be a mapping, not %s", inv.where(v.Line), what, kindName(v))
	}
	var m map[string]any
	if err := v.Decode(&m); err != nil {
		return nil, nil, fmt.Errorf("%s: %s: %w", inv.where(v.Line), what, err)
	}
	for k, x := range m {
		m[k] = normalize(x)
	}
	pos := make(map[string]string, len(m))
	for i := 0; i+1 < len(v.Content); i += 2 {
		pos[v.Content[i].Value] = inv.where(v.Content[i].Line)
	}
	return m, pos, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == yaml.ScalarNode && (n.Tag == "!!null" || n.Value == "" && n.Style == 0)
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		return fmt.Sprintf("the value %q", n.Value)
	}
	return "this"
}
