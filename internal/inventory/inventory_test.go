package inventory

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const iniSample = `# fleet
lb1 ansible_host=10.0.0.1

[web]
web1 ansible_host=127.0.0.2 ansible_port=2201 ansible_user=deploy role=web
web[02:04] role=web  # zero-padded range
web01.example.com:2222 flag=True mode=0755 ratio=1.5 quoted="two words" list="['a', 'b']"

[db]
db-[a:c]
web1

[db:vars]
tier=db
ntp=db-ntp

[web:vars]
tier=web
ntp=web-ntp

[prod:children]
web
db

[prod:vars]
ntp=prod-ntp
env=prod
tier=prod

[all:vars]
ntp=global
ansible_user=admin
env=none
`

func names(hs []Host) []string {
	out := make([]string, len(hs))
	for i, h := range hs {
		out[i] = h.Name
	}
	return out
}

func mustParse(t *testing.T, name, text string) *Inventory {
	t.Helper()
	inv, err := Parse(name, []byte(text))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return inv
}

func TestINIHostsAndVars(t *testing.T) {
	t.Parallel()
	inv := mustParse(t, "hosts.ini", iniSample)

	want := []string{"lb1", "web1", "web02", "web03", "web04", "web01.example.com", "db-a", "db-b", "db-c"}
	if got := names(inv.Hosts()); !reflect.DeepEqual(got, want) {
		t.Fatalf("hosts = %v, want %v", got, want)
	}

	web1, ok := inv.Host("web1")
	if !ok {
		t.Fatal("web1 missing")
	}
	if web1.Addr != "127.0.0.2" || web1.Port != 2201 || web1.User != "deploy" {
		t.Errorf("web1 connection = %s:%d %s, want 127.0.0.2:2201 deploy", web1.Addr, web1.Port, web1.User)
	}
	// prod (depth 1) < db, web (depth 2, merged by name: db then web) < host.
	checks := map[string]any{"role": "web", "ntp": "web-ntp", "tier": "web", "env": "prod"}
	for k, v := range checks {
		if web1.Vars[k] != v {
			t.Errorf("web1 %s = %#v, want %#v", k, web1.Vars[k], v)
		}
	}
	if !reflect.DeepEqual(web1.Groups, []string{"all", "prod", "db", "web"}) {
		t.Errorf("web1 groups = %v", web1.Groups)
	}

	lb, _ := inv.Host("lb1")
	if lb.Addr != "10.0.0.1" || lb.User != "admin" || lb.Port != 0 || lb.Vars["ntp"] != "global" {
		t.Errorf("lb1 = %+v", lb)
	}
	if !reflect.DeepEqual(lb.Groups, []string{"all", "ungrouped"}) {
		t.Errorf("lb1 groups = %v, want all, ungrouped", lb.Groups)
	}

	w := mustHost(t, inv, "web01.example.com")
	if w.Port != 2222 || w.Addr != "web01.example.com" {
		t.Errorf("host:port form: %+v", w)
	}
	wantVars := map[string]any{"flag": true, "mode": "0755", "ratio": 1.5, "quoted": "two words", "list": []any{"a", "b"}}
	for k, v := range wantVars {
		if !reflect.DeepEqual(w.Vars[k], v) {
			t.Errorf("%s = %#v, want %#v", k, w.Vars[k], v)
		}
	}
	if got := mustHost(t, inv, "db-b").Vars["tier"]; got != "prod" && got != "db" {
		t.Errorf("db-b tier = %v", got)
	} else if got != "db" {
		t.Errorf("db-b tier = %v, want db (child group beats parent)", got)
	}

	gh, _ := inv.GroupHosts("prod")
	if !reflect.DeepEqual(gh, []string{"web1", "web02", "web03", "web04", "web01.example.com", "db-a", "db-b", "db-c"}) {
		t.Errorf("prod hosts = %v", gh)
	}
	ug, _ := inv.GroupHosts("ungrouped")
	if !reflect.DeepEqual(ug, []string{"lb1"}) {
		t.Errorf("ungrouped = %v", ug)
	}
}

func mustHost(t *testing.T, inv *Inventory, name string) Host {
	t.Helper()
	h, ok := inv.Host(name)
	if !ok {
		t.Fatalf("host %s missing", name)
	}
	return h
}

func TestGroupPriority(t *testing.T) {
	t.Parallel()
	inv := mustParse(t, "p.ini", `
[a]
h1
[b]
h1
[a:vars]
x=a
ansible_group_priority=10
[b:vars]
x=b
`)
	if got := mustHost(t, inv, "h1").Vars["x"]; got != "a" {
		t.Errorf("x = %v, want a (higher ansible_group_priority wins)", got)
	}
}

func TestHostsReturnCopies(t *testing.T) {
	t.Parallel()
	inv := mustParse(t, "c.ini", "h1 x=1\n")
	h := mustHost(t, inv, "h1")
	h.Vars["x"] = 2
	if got := mustHost(t, inv, "h1").Vars["x"]; got != 1 {
		t.Errorf("inventory changed through a returned host: x = %v", got)
	}
}

const yamlSample = `all:
  hosts:
    lb1:
      ansible_host: 10.0.0.1
  vars:
    ntp: global
    ansible_user: admin
  children:
    prod:
      vars:
        ntp: prod-ntp
        nested: {a: 1}
      children:
        web:
          hosts:
            web1:
              ansible_host: 127.0.0.2
              ansible_port: "2201"
              ansible_user: deploy
            web[02:03]:
          vars:
            ntp: web-ntp
        db:
          hosts:
            db1:2222:
extra:
  hosts:
    web1:
      role: web
`

func TestYAML(t *testing.T) {
	t.Parallel()
	inv := mustParse(t, "inv.yaml", yamlSample)
	if got, want := names(inv.Hosts()), []string{"lb1", "web1", "web02", "web03", "db1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("hosts = %v, want %v", got, want)
	}
	web1 := mustHost(t, inv, "web1")
	if web1.Addr != "127.0.0.2" || web1.Port != 2201 || web1.User != "deploy" {
		t.Errorf("web1 = %+v", web1)
	}
	if web1.Vars["ntp"] != "web-ntp" || web1.Vars["role"] != "web" {
		t.Errorf("web1 vars = %v", web1.Vars)
	}
	if !reflect.DeepEqual(web1.Vars["nested"], map[string]any{"a": 1}) {
		t.Errorf("nested = %#v", web1.Vars["nested"])
	}
	if db := mustHost(t, inv, "db1"); db.Port != 2222 || db.User != "admin" || db.Vars["ntp"] != "prod-ntp" {
		t.Errorf("db1 = %+v", db)
	}
	if lb := mustHost(t, inv, "lb1"); !reflect.DeepEqual(lb.Groups, []string{"all", "ungrouped"}) {
		t.Errorf("lb1 groups = %v", lb.Groups)
	}
}

func TestFormatDetection(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "hosts") // no extension, YAML content
	if err := os.WriteFile(p, []byte(yamlSample), 0o644); err != nil {
		t.Fatal(err)
	}
	inv, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Hosts()) != 5 {
		t.Errorf("hosts = %v", names(inv.Hosts()))
	}
	p2 := filepath.Join(dir, "hosts2")
	if err := os.WriteFile(p2, []byte(iniSample), 0o644); err != nil {
		t.Fatal(err)
	}
	if inv, err = Load(p2); err != nil || len(inv.Hosts()) != 9 {
		t.Fatalf("INI without extension: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, file, text, want string
	}{
		{"undeclared child", "a.ini", "[web]\nw1\n\n[prod:children]\nweb\ndb\n", "a.ini:6: section [prod:children] includes group db"},
		{"vars of unknown group", "a.ini", "h1\n[nope:vars]\nx=1\n", "a.ini:2: section [nope:vars]"},
		{"bad section type", "a.ini", "[web:hosts]\n", "a.ini:1: section [web:hosts] has unknown type"},
		{"bad host var", "a.ini", "[web]\nw1 ansible_host\n", "a.ini:2: expected key=value"},
		{"bad range", "a.ini", "[web]\nw[01:3]\n", "a.ini:2: host range [01:3]"},
		{"bad port", "a.ini", "\n\nw1 ansible_port=http\n", `a.ini:3: host w1: ansible_port: port "http" is not a number`},
		{"unclosed quote", "a.ini", "w1 x='a\n", "a.ini:1: no closing quotation"},
		{"cycle", "a.ini", "[a]\n[b]\n[a:children]\nb\n[b:children]\na\n", "a.ini:6: group a cannot be a child of b"},
		{"yaml syntax", "a.yml", "all:\n  hosts:\n\tweb1:\n", "a.yml:3: found character that cannot start any token"},
		{"yaml hosts list", "a.yml", "all:\n  hosts:\n    - web1\n", "a.yml:3: hosts of group all must be a mapping"},
		{"yaml unknown key", "a.yml", "all:\n  host:\n    web1:\n", `a.yml:2: group all has unexpected key "host"`},
		{"yaml host vars", "a.yml", "all:\n  hosts:\n    web1: 3\n", "a.yml:3: variables of host web1 must be a mapping"},
		{"yaml bad port", "a.yml", "all:\n  hosts:\n    web1:\n      ansible_port: 70000\n", "a.yml:4: host web1: ansible_port: port 70000 is out of range"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse(c.file, []byte(c.text))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestExpandRanges(t *testing.T) {
	t.Parallel()
	cases := map[string][]string{
		"web[1:3]":        {"web1", "web2", "web3"},
		"web[08:10].x":    {"web08.x", "web09.x", "web10.x"},
		"r[a:c][1:2]":     {"ra1", "ra2", "rb1", "rb2", "rc1", "rc2"},
		"s[0:6:3]":        {"s0", "s3", "s6"},
		"h[:2]":           {"h0", "h1", "h2"},
		"plain.host.name": {"plain.host.name"},
	}
	for in, want := range cases {
		got, port, err := expandHostPattern(in)
		if err != nil || port != 0 || !reflect.DeepEqual(got, want) {
			t.Errorf("expand %q = %v, %d, %v; want %v", in, got, port, err, want)
		}
	}
	if got, port, err := expandHostPattern("[2001:db8::1]:2200"); err != nil || port != 2200 || got[0] != "2001:db8::1" {
		t.Errorf("ipv6 with port: %v %d %v", got, port, err)
	}
	if got, port, _ := expandHostPattern("2001:db8::1"); port != 0 || got[0] != "2001:db8::1" {
		t.Errorf("bare ipv6: %v %d", got, port)
	}
}

func TestLimit(t *testing.T) {
	t.Parallel()
	inv := mustParse(t, "hosts.ini", iniSample)
	cases := []struct {
		pattern string
		want    []string
	}{
		{"all", names(inv.Hosts())},
		{"*", names(inv.Hosts())},
		{"web1", []string{"web1"}},
		{"db", []string{"web1", "db-a", "db-b", "db-c"}},
		{"db,lb1", []string{"lb1", "web1", "db-a", "db-b", "db-c"}},
		{"db:lb1", []string{"lb1", "web1", "db-a", "db-b", "db-c"}},
		{"prod,!web", []string{"db-a", "db-b", "db-c"}},
		{"!web,prod", []string{"db-a", "db-b", "db-c"}},
		{"web,&db", []string{"web1"}},
		{"!prod", []string{"lb1"}},
		{"web0*", []string{"web02", "web03", "web04", "web01.example.com"}},
		{"db-?", []string{"db-a", "db-b", "db-c"}},
		{"d*", []string{"web1", "db-a", "db-b", "db-c"}}, // group db matches too
		{`~^web\d+$`, []string{"web1", "web02", "web03", "web04"}},
		{"web[0]", []string{"web1"}},
		{"web[-1]", []string{"web01.example.com"}},
		{"web[1:2]", []string{"web02", "web03"}},
		{"web[3:]", []string{"web04", "web01.example.com"}},
		{" web1 , db-a ", []string{"web1", "db-a"}},
		{"ungrouped", []string{"lb1"}},
		{"prod:!db-*:&web", []string{"web1", "web02", "web03", "web04", "web01.example.com"}},
		{"prod:!db:&web", []string{"web02", "web03", "web04", "web01.example.com"}},
	}
	for _, c := range cases {
		got, err := inv.Limit(c.pattern)
		if err != nil {
			t.Errorf("Limit(%q): %v", c.pattern, err)
			continue
		}
		if !reflect.DeepEqual(names(got), c.want) {
			t.Errorf("Limit(%q) = %v, want %v", c.pattern, names(got), c.want)
		}
	}
	// Limited hosts carry their merged vars.
	got, _ := inv.Limit("web1")
	if got[0].Port != 2201 || got[0].Vars["tier"] != "web" {
		t.Errorf("limited host = %+v", got[0])
	}

	for pattern, want := range map[string]string{
		"webz":       `"webz" names no host or group`,
		"web,!web":   "selects no host",
		"nomatch*":   "selects no host",
		"~(":         "error parsing regexp",
		"":           "empty host pattern",
		"web[9]":     "index out of range",
		"db,!zzz,lb": `"lb" names no host or group`,
	} {
		if _, err := inv.Limit(pattern); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Limit(%q) err = %v, want %q", pattern, err, want)
		}
	}
}

func TestParseValue(t *testing.T) {
	t.Parallel()
	cases := map[string]any{
		"8080": 8080, "-3": -3, "0x10": 16, "1_000": 1000, "0755": "0755", "1.5": 1.5, "1e3": 1000.0,
		"True": true, "False": false, "None": nil, "true": "true", "yes": "yes",
		"'quoted'": "quoted", `"a\tb"`: "a\tb", "[1, 2]": []any{1, 2}, "{'k': 'v'}": map[string]any{"k": "v"},
		"inf": "inf", "hello world": "hello world", "": "",
	}
	for in, want := range cases {
		if got := parseValue(in); !reflect.DeepEqual(got, want) {
			t.Errorf("parseValue(%q) = %#v, want %#v", in, got, want)
		}
	}
}
