package fleettest

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/job"
)

// patchStar is the workflow of the inventory tests: it records when its
// first command ran on the target (to check the throttle), asks the
// target which address it was reached on and as whom, runs a command on
// another inventory host and one on the controller, and emits all that
// with the host's variables.
const patchStar = `
def main(release = "r1"):
    sh("s=$(date +%s.%N); sleep 0.4; echo " + target + " $s $(date +%s.%N) >> @R@/intervals")
    me = sh("echo $SSH_CONNECTION | cut -d' ' -f3; id -un").stdout.split("\n")
    other = sh("echo $SSH_CONNECTION | cut -d' ' -f3", on = "db1").stdout.strip()
    here = sh("id -un; echo ${SSH_CONNECTION:-none}", on = "local").stdout.split("\n")
    emit(json.encode({
        "host": target, "addr": me[0], "login": me[1], "release": release,
        "role": vars.get("role"), "color": vars.get("color"), "site": vars.get("site"),
        "db1": other, "local": here[0] + " " + here[1],
    }))
`

type patchResult struct {
	Host, Addr, Login, Release, Role, Color, Site, DB1, Local string
}

// TestInventoryLimitThrottle is issue 3's first use: drover run
// patch.star --inventory hosts.ini --limit web --throttle N, with groups,
// children groups, ansible_host/port/user and host and group variables.
func TestInventoryLimitThrottle(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 7)
	var inv strings.Builder
	inv.WriteString("[all:vars]\nsite=lab\n\n[web_a]\n")
	inv.WriteString(f.invLine("web1", f.host(0), "color=blue"))
	inv.WriteString(f.invLine("web2", f.host(1), ""))
	inv.WriteString(f.invLine("web3", f.host(2), ""))
	inv.WriteString("\n[web_b]\n")
	inv.WriteString(f.invLine("web4", f.host(3), ""))
	inv.WriteString(f.invLine("web5", f.host(4), ""))
	inv.WriteString(f.invLine("web6", f.host(5), ""))
	inv.WriteString("\n[web:children]\nweb_a\nweb_b\n\n[web:vars]\nrole=web\ncolor=green\n\n[web_b:vars]\ncolor=red\n\n[db]\n")
	inv.WriteString(f.invLine("db1", f.host(6), ""))
	inv.WriteString("\n[db:vars]\nrole=db\n")
	hosts := f.write("hosts.ini", inv.String())
	patch := f.write("patch.star", patchStar)

	start := time.Now()
	p := f.must(0, 60*time.Second, "run", patch, "--inventory", hosts, "--limit", "web", "--throttle", "2", "-p", "release=r7")
	wall := time.Since(start)
	if !strings.Contains(p.Stderr.String(), "hosts") {
		t.Errorf("no progress over hosts on stderr:\n%s", p.Stderr.String())
	}

	parent := f.parent()
	if parent.State != job.Completed {
		t.Fatalf("parent %s is %s: %s", parent.ID, parent.State, parent.Error)
	}
	v := f.show(parent.ID)
	if v.Children[job.Completed] != 6 || len(v.Children) != 1 {
		t.Errorf("children of %s: %v, want 6 completed", parent.ID, v.Children)
	}
	children := f.children(parent.ID)
	if len(children) != 6 || children["db1"] != nil {
		t.Fatalf("children by host: %v (want web1..web6, not db1)", keys(children))
	}

	want := map[string]patchResult{
		"web1": {Color: "blue"}, "web2": {Color: "green"}, "web3": {Color: "green"},
		"web4": {Color: "red"}, "web5": {Color: "red"}, "web6": {Color: "red"},
	}
	for i, name := range []string{"web1", "web2", "web3", "web4", "web5", "web6"} {
		c := children[name]
		if !strings.HasPrefix(c.ID, parent.ID+".") || c.ParentID != parent.ID || c.State != job.Completed {
			t.Errorf("child %s: id %s parent %s state %s", name, c.ID, c.ParentID, c.State)
			continue
		}
		out := f.output(c.ID)
		if len(out) != 1 {
			t.Errorf("output of %s: %q", c.ID, out)
			continue
		}
		var got patchResult
		if err := json.Unmarshal([]byte(out[0]), &got); err != nil {
			t.Fatalf("output of %s: %v: %s", c.ID, err, out[0])
		}
		w := patchResult{Host: name, Addr: f.host(i).Addr, Login: f.s.User, Release: "r7", Role: "web",
			Color: want[name].Color, Site: "lab", DB1: f.host(6).Addr, Local: currentUser(t) + " none"}
		if got != w {
			t.Errorf("%s emitted %+v\nwant %+v", name, got, w)
		}
	}

	iv := readIntervals(t, f.remoteLines("intervals"))
	if len(iv) != 6 {
		t.Fatalf("intervals: %v", iv)
	}
	if n := maxOverlap(iv); n > 2 {
		t.Errorf("--throttle 2: %d hosts ran at once: %v", n, iv)
	}
	// Three rounds of 0.4 s at least.
	if wall < 1200*time.Millisecond {
		t.Errorf("6 hosts of 0.4 s at throttle 2 took %s", wall)
	}

	// drover show CHILD is a normal job: its steps name their hosts.
	web2 := children["web2"]
	cp := f.must(0, 30*time.Second, "show", web2.ID)
	text := cp.Stdout.String()
	for _, want := range []string{"Target:", "web2", "Parent:", parent.ID, "completed", "db1", "local", "patch.star:"} {
		if !strings.Contains(text, want) {
			t.Errorf("drover show %s lacks %q:\n%s", web2.ID, want, text)
		}
	}
	cv := f.show(web2.ID)
	hostsOf := map[string]bool{}
	for _, st := range cv.Steps {
		hostsOf[st.Host] = true
	}
	if !hostsOf["web2"] || !hostsOf["db1"] || !hostsOf["local"] || len(cv.Steps) != 4 {
		t.Errorf("steps of %s: %+v", web2.ID, cv.Steps)
	}
	// The parent's text summary counts its children.
	pt := f.must(0, 30*time.Second, "show", parent.ID).Stdout.String()
	if !strings.Contains(pt, "Children: 6 (6 completed)") {
		t.Errorf("drover show %s:\n%s", parent.ID, pt)
	}
}

// TestYAMLInventory runs over a YAML inventory with children groups and
// variables at every level.
func TestYAMLInventory(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3)
	h := func(i int, extra string) string {
		s := fmt.Sprintf("ansible_host: %s\n          ansible_port: %d\n          ansible_user: %s\n", f.host(i).Addr, f.host(i).Port, f.s.User)
		if extra != "" {
			s += "          " + extra + "\n"
		}
		return s
	}
	yml := "all:\n  vars:\n    site: lab\n  children:\n    web:\n      vars:\n        role: web\n        color: green\n      children:\n        canary:\n          vars:\n            color: yellow\n          hosts:\n            c1:\n"
	yml += "              " + strings.ReplaceAll(h(0, ""), "\n          ", "\n              ")
	yml += "      hosts:\n        w1:\n          " + h(1, "color: blue")
	yml += "    db:\n      vars:\n        role: db\n      hosts:\n        db1:\n          " + h(2, "")
	hosts := f.write("hosts.yml", yml)
	patch := f.write("patch.star", patchStar)
	p, code := f.drover(60*time.Second, "run", patch, "--inventory", hosts, "--limit", "web")
	if code != 0 {
		t.Fatalf("inventory:\n%s\n%s", yml, p)
	}
	parent := f.parent()
	children := f.children(parent.ID)
	want := map[string]patchResult{
		"c1": {Host: "c1", Addr: f.host(0).Addr, Color: "yellow"},
		"w1": {Host: "w1", Addr: f.host(1).Addr, Color: "blue"},
	}
	if len(children) != 2 {
		t.Fatalf("children: %v", keys(children))
	}
	for name, w := range want {
		out := f.output(children[name].ID)
		var got patchResult
		if len(out) != 1 || json.Unmarshal([]byte(out[0]), &got) != nil {
			t.Fatalf("output of %s: %q", name, out)
		}
		w.Login, w.Release, w.Role, w.Site, w.DB1, w.Local = f.s.User, "r1", "web", "lab", f.host(2).Addr, currentUser(t)+" none"
		if got != w {
			t.Errorf("%s emitted %+v\nwant %+v", name, got, w)
		}
	}
}

// TestTargetsSSHDestinations runs over --targets: SSH destinations as
// written (user@addr:port) and aliases that ~/.ssh/config resolves
// (Host patterns, HostName, Port, User, IdentityFile).
func TestTargetsSSHDestinations(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3)
	h1, h2, h3 := f.host(0), f.host(1), f.host(2)
	// The key is moved out of the default place: only IdentityFile finds it.
	if err := os.Rename(filepath.Join(f.home, ".ssh", "id_ed25519"), filepath.Join(f.home, ".ssh", "fleet_key")); err != nil {
		t.Fatal(err)
	}
	f.write("home/.ssh/config", fmt.Sprintf(`Host web-*
    User %s
    Port %d
    IdentityFile ~/.ssh/fleet_key

Host web-2
    HostName %s

Host web-3
    HostName %s

Host *
    IdentityFile ~/.ssh/fleet_key
`, f.s.User, h2.Port, h2.Addr, h3.Addr))
	wf := f.write("who.star", `
def main():
    r = sh("echo $SSH_CONNECTION | cut -d' ' -f3; id -un").stdout.split("\n")
    emit(target + " " + r[0] + " " + r[1])
`)
	dest1 := fmt.Sprintf("%s@%s:%d", f.s.User, h1.Addr, h1.Port)
	p, code := f.drover(60*time.Second, "run", wf, "--targets", dest1+",web-2,web-3")
	if code != 0 {
		t.Fatalf("%s", p)
	}
	parent := f.parent()
	children := f.children(parent.ID)
	for host, addr := range map[string]string{dest1: h1.Addr, "web-2": h2.Addr, "web-3": h3.Addr} {
		c := children[host]
		if c == nil {
			t.Errorf("no child for %s: %v", host, keys(children))
			continue
		}
		if out := f.output(c.ID); len(out) != 1 || out[0] != host+" "+addr+" "+f.s.User {
			t.Errorf("%s: output %q, want %q", host, out, host+" "+addr+" "+f.s.User)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func currentUser(t *testing.T) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

// TestTerminalProgress: on a terminal drover run shows a status line with
// progress over hosts, redrawn in place.
func TestTerminalProgress(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("script"); err != nil {
		t.Skip("script(1) not installed: no pseudo-terminal")
	}
	f := newFleet(t, 4)
	inv := f.s.WriteInventory("hosts.ini")
	wf := f.write("slow.star", `
def main():
    sh("sleep 0.6")
`)
	cmd := f.command()
	cmd.Path, _ = exec.LookPath("script")
	cmd.Args = []string{"script", "-qec", fmt.Sprintf("%s run %s --inventory %s --throttle 2", droverBin, wf, inv), "/dev/null"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("drover run on a terminal: %v\n%s", err, out)
	}
	text := string(out)
	for _, w := range []string{"started on 4 hosts", "\r\033[K", "hosts", "/4 (", "completed"} {
		if !strings.Contains(text, w) {
			t.Errorf("terminal output lacks %q:\n%q", w, text)
		}
	}
}
