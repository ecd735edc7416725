package fleettest

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/drover/drover/internal/job"
	"github.com/drover/drover/internal/remote/sshtest"
)

// hostKeyStar runs one command on its target.
const hostKeyStar = `
def main():
    sh("echo " + target + " >> @R@/ran")
`

// TestHostKeys: known_hosts verification is on by default; an unknown
// host fails its child with an error naming the host, and
// --accept-new-host-keys records its key; a changed key fails loudly,
// flag or not, and is never overwritten.
func TestHostKeys(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3)
	known, unknown, changed := f.host(0), f.host(1), f.host(2)
	f.s.ForgetHostKey(unknown)
	f.s.ChangeHostKey(changed)
	f.syncKnownHosts()
	before, _ := os.ReadFile(f.knownHosts())
	inv := f.write("hosts.ini", "[all]\n"+f.invLine("known", known, "")+f.invLine("unknown", unknown, "")+f.invLine("changed", changed, ""))
	wf := f.write("hk.star", hostKeyStar)

	p := f.must(1, 60*time.Second, "run", wf, "--inventory", inv)
	parent := f.parent()
	v := f.show(parent.ID)
	if v.Children[job.Completed] != 1 || v.Children[job.Failed] != 2 {
		t.Fatalf("children: %v\n%s", v.Children, p)
	}
	if got := f.remoteLines("ran"); len(got) != 1 || got[0] != "known" {
		t.Errorf("ran on %q, want only the known host", got)
	}
	if e := v.failedError("unknown"); !strings.Contains(e, "host unknown") || !strings.Contains(e, "host key unknown") || !strings.Contains(e, "--accept-new-host-keys") {
		t.Errorf("unknown host's error does not name the host, the cause and the way out:\n%s", e)
	}
	if e := v.failedError("changed"); !strings.Contains(e, "host changed") || !strings.Contains(e, "host key changed") || !strings.Contains(e, f.knownHosts()) {
		t.Errorf("changed key's error does not name the host, the cause and the file:\n%s", e)
	}
	after, _ := os.ReadFile(f.knownHosts())
	if string(after) != string(before) {
		t.Errorf("known_hosts changed without --accept-new-host-keys:\n%s", after)
	}
	// The text summary lists the failed hosts with their errors.
	text := f.must(0, 30*time.Second, "show", parent.ID).Stdout.String()
	for _, w := range []string{"Children: 3 (1 completed, 2 failed)", "Failed hosts:", "unknown (" + parent.ID + ".", "changed (" + parent.ID + ".", "host key unknown", "host key changed"} {
		if !strings.Contains(text, w) {
			t.Errorf("drover show %s lacks %q:\n%s", parent.ID, w, text)
		}
	}

	// Resume with the opt-in: the unknown host's key is recorded and it
	// runs; the changed one still fails, and its old key stays.
	p = f.must(1, 60*time.Second, "resume", parent.ID, "--accept-new-host-keys")
	v = f.show(parent.ID)
	if v.Children[job.Completed] != 2 || v.Children[job.Failed] != 1 || v.failedError("changed") == "" {
		t.Fatalf("after resume --accept-new-host-keys: %v %+v\n%s", v.Children, v.Failed, p)
	}
	if got := f.remoteLines("ran"); strings.Join(got, ",") != "known,unknown" {
		t.Errorf("ran on %q, want known then unknown (the known host must not run again)", got)
	}
	entries := knownHostsFor(t, f.knownHosts(), unknown)
	if len(entries) != 1 || !strings.Contains(entries[0], keyText(unknown)) {
		t.Errorf("known_hosts entries for %s after --accept-new-host-keys: %q", unknown.HostPort(), entries)
	}
	if e := knownHostsFor(t, f.knownHosts(), changed); len(e) != 1 || strings.Contains(e[0], keyText(changed)) {
		t.Errorf("the changed host's recorded key was replaced: %q", e)
	}
}

// knownHostsFor returns the lines of a known_hosts file for h.
func knownHostsFor(t *testing.T, path string, h sshtest.Host) []string {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var out []string
	sc := bufio.NewScanner(fh)
	want := "[" + h.Addr + "]:"
	for sc.Scan() {
		l := sc.Text()
		if fs := strings.Fields(l); len(fs) >= 3 && strings.Contains(fs[0], want) && strings.Contains(fs[0], ":"+strconv.Itoa(h.Port)) {
			out = append(out, l)
		}
	}
	return out
}

// keyText is a host key as known_hosts writes it (base64).
func keyText(h sshtest.Host) string { return base64.StdEncoding.EncodeToString(h.HostKey.Marshal()) }

// failStar runs a step on every host, then what the host's mode var asks.
const failStar = `
def main():
    sh("echo " + target + " >> @R@/began")
    mode = vars.get("mode", "")
    if mode == "drop":
        sh("touch @R@/drop-started; sleep 4; echo late >> @R@/drop-done")
    elif mode == "timeout":
        sh("sleep @SLEEP@", timeout = "1s")
    else:
        sh("sleep 0.3; echo " + target + " >> @R@/finished")
`

// TestFailuresStayLocal: a host that refuses connections, one that
// refuses the client's key, one whose key changed, one whose connection
// drops for good mid-command and one whose command times out each fail
// their own child job with the host, the step, the script position and
// the cause; the other hosts, a slow one among them, complete.
func TestFailuresStayLocal(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 5)
	// A host of its own sshd, to kill it mid-command without touching
	// the others (hosts come 16 to an sshd). It authorizes another key.
	s2 := sshtest.Start(t, 1)
	dropped := s2.Hosts[0]
	kh, _ := os.ReadFile(s2.KnownHosts)
	appendFile(t, f.knownHosts(), string(kh))
	slow := f.s.SlowHost(f.host(4), 15*time.Millisecond)
	appendFile(t, f.knownHosts(), strings.Join(knownHostsFor(t, f.s.KnownHosts, slow), "\n")+"\n")
	f.s.ChangeHostKey(f.host(2))
	kh, _ = os.ReadFile(f.s.KnownHosts)
	// Re-sync, keeping s2's line.
	s2kh, _ := os.ReadFile(s2.KnownHosts)
	if err := os.WriteFile(f.knownHosts(), append(kh, s2kh...), 0o600); err != nil {
		t.Fatal(err)
	}
	wrongKey := f.write("wrong_key", "")
	writeNewKey(t, wrongKey)
	refusing := f.s.RefusingHost()
	sleep := uniqueSleep(300)
	t.Cleanup(func() { f.killRemote("sleep " + sleep) })

	inv := "[ok]\n" + f.invLine("ok1", f.host(0), "") + f.invLine("ok2", f.host(1), "") +
		f.invLine("slow", slow, "") +
		"[bad]\n" + f.invLine("refusing", refusing, "") +
		f.invLine("wrongkey", f.host(3), "ansible_ssh_private_key_file="+wrongKey) +
		f.invLine("changed", f.host(2), "") +
		f.invLine("dropped", dropped, "mode=drop ansible_ssh_private_key_file="+s2.ClientKey) +
		f.invLine("timeout", f.host(0), "mode=timeout")
	hosts := f.write("hosts.ini", inv)
	wf := f.write("fail.star", strings.ReplaceAll(failStar, "@SLEEP@", sleep))

	p := f.start("run", wf, "--inventory", hosts)
	f.eventually(30*time.Second, "the dropped host's command to start", func() bool { return f.remoteExists("drop-started") })
	s2.Stop(dropped)
	if code := p.Wait(t, 60*time.Second); code != 1 {
		t.Fatalf("want exit 1: %s", p)
	}

	parent := f.parent()
	v := f.show(parent.ID)
	if v.Children[job.Completed] != 3 || v.Children[job.Failed] != 5 {
		t.Fatalf("children: %v, failed: %+v\n%s", v.Children, v.Failed, p)
	}
	finished := f.remoteLines("finished")
	sort.Strings(finished)
	if strings.Join(finished, ",") != "ok1,ok2,slow" {
		t.Errorf("finished on %q, want ok1, ok2 and slow", finished)
	}
	children := f.children(parent.ID)
	for host, want := range map[string][]string{
		"refusing": {"host refusing", "host unreachable", "refused", "step 1 (sh on refusing)", "fail.star:3:"},
		"wrongkey": {"host wrongkey", "authentication refused", "step 1 (sh on wrongkey)", "fail.star:3:"},
		"changed":  {"host changed", "host key changed", "step 1 (sh on changed)", "fail.star:3:"},
		"dropped":  {"host dropped", "connection dropped", "step 2 (sh on dropped)", "fail.star:6:"},
		"timeout":  {"timed out after 1s", "step 2 (sh on timeout)", "fail.star:8:"},
	} {
		e := v.failedError(host)
		for _, w := range want {
			if !strings.Contains(e, w) {
				t.Errorf("%s's error lacks %q:\n%s", host, w, e)
			}
		}
		if c := children[host]; c == nil || c.Error != e || !strings.Contains(e, c.ID) {
			t.Errorf("%s: show's error is not the child's own, naming it: %+v", host, c)
		}
	}
	// The timed-out command's process group is gone from the target.
	f.eventually(10*time.Second, "the timed-out command to be killed", func() bool { return len(f.remoteProcs("sleep "+sleep)) == 0 })
	t.Logf("errors as drover show prints them:\n%s", f.must(0, 30*time.Second, "show", parent.ID).Stdout.String())
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteString(text); err != nil {
		t.Fatal(err)
	}
}

// writeNewKey writes a fresh ed25519 key that no host authorizes.
func writeNewKey(t *testing.T, path string) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
}
