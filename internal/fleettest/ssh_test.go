package fleettest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAgentEncryptedKey: the user's key is encrypted; drover uses it
// through the real ssh-agent named by SSH_AUTH_SOCK, and without the
// agent fails the host with an error saying why.
func TestAgentEncryptedKey(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"ssh-agent", "ssh-add", "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	f := newFleet(t, 1)
	key := filepath.Join(f.home, ".ssh", "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-p", "-P", "", "-N", "s3cret", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("encrypting the key: %v: %s", err, out)
	}
	wf := f.write("who.star", `
def main():
    emit(sh("id -un").stdout.strip())
`)
	p := f.must(1, 60*time.Second, "run", wf, "--targets", f.dest(0))
	parent := f.parent()
	if e := f.show(parent.ID).Failed; len(e) != 1 || !strings.Contains(e[0].Error, "authentication refused") {
		t.Errorf("an encrypted key without an agent: %+v\n%s", e, p)
	}

	sock := filepath.Join(f.dir, "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	f.eventually(5*time.Second, "ssh-agent's socket", func() bool { _, err := os.Stat(sock); return err == nil })
	askpass := f.write("askpass.sh", "#!/bin/sh\necho s3cret\n")
	os.Chmod(askpass, 0o755)
	add := exec.Command("ssh-add", key)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock, "SSH_ASKPASS="+askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0")
	add.Stdin = nil
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v: %s", err, out)
	}
	f.env = []string{"SSH_AUTH_SOCK=" + sock}
	f.must(0, 60*time.Second, "resume", parent.ID)
	c := f.children(parent.ID)[f.dest(0)]
	if out := f.output(c.ID); len(out) != 1 || out[0] != f.s.User {
		t.Errorf("through the agent: output %q", out)
	}
}

// TestProxyJump: a host reached through a jump host named by ProxyJump
// in ~/.ssh/config.
func TestProxyJump(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 2)
	jump, behind := f.host(0), f.host(1)
	f.write("home/.ssh/config", fmt.Sprintf(`Host jump
    HostName %s
    Port %d
    User %s

Host behind
    HostName %s
    Port %d
    User %s
    ProxyJump jump
`, jump.Addr, jump.Port, f.s.User, behind.Addr, behind.Port, f.s.User))
	wf := f.write("who.star", `
def main():
    emit(sh("echo $SSH_CONNECTION | cut -d' ' -f3").stdout.strip())
`)
	log := filepath.Join(f.s.Dir, "sshd0.log") // sshtest's log of the sshd serving both
	onJump := func() int {
		b, _ := os.ReadFile(log)
		return strings.Count(string(b), fmt.Sprintf(" on %s port %d", jump.Addr, jump.Port))
	}
	before := onJump()
	f.must(0, 60*time.Second, "run", wf, "--targets", "behind")
	parent := f.parent()
	c := f.children(parent.ID)["behind"]
	if out := f.output(c.ID); len(out) != 1 || out[0] != behind.Addr {
		t.Errorf("behind the jump host: output %q, want %s", out, behind.Addr)
	}
	if onJump() == before {
		t.Errorf("no connection reached the jump host %s (sshd log %s)", jump.Addr, log)
	}
}
