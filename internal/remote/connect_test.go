package remote_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/remote"
	"github.com/drover/drover/internal/remote/sshtest"
)

func TestConnectErrors(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 4)
	cmd := func(h engine.Host) *engine.Command {
		return &engine.Command{JobID: "errs", StepKey: "1", Host: h, Cmd: "echo ok"}
	}
	expectErr := func(t *testing.T, m *remote.Manager, h engine.Host, kind error, parts ...string) {
		t.Helper()
		_, err := m.Exec(context.Background(), cmd(h))
		if !errors.Is(err, kind) {
			t.Fatalf("err = %v, want %v", err, kind)
		}
		t.Log(err)
		for _, p := range append(parts, "host "+h.Name) {
			if !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not say %q", err, p)
			}
		}
	}

	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		m := newManager(t, s, func(o *remote.Options) { o.ConnectRetries = 2 })
		r := s.RefusingHost()
		expectErr(t, m, engine.Host{Name: "gone", Addr: r.Addr, Port: r.Port, User: s.User}, remote.ErrUnreachable,
			"connection refused", "check that sshd runs there")
		if mt := m.Metrics(); mt.Dials != 3 || mt.HandshakeFailures != 3 {
			t.Errorf("metrics %+v, want 3 attempts (1 + 2 retries)", mt)
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		t.Parallel()
		other := writeKey(t, t.TempDir(), nil)
		m := newManager(t, s, func(o *remote.Options) { o.IdentityFiles = []string{other.path} })
		expectErr(t, m, engineHost(s, s.Hosts[0]), remote.ErrAuth,
			"user "+s.User+" refused", other.path, ssh.FingerprintSHA256(other.signer.PublicKey()), "authorized_keys")
		if mt := m.Metrics(); mt.Dials != 1 {
			t.Errorf("a refused key was retried: %+v", mt)
		}
	})

	t.Run("unknown host key", func(t *testing.T) {
		t.Parallel()
		s.ForgetHostKey(s.Hosts[1])
		h := engineHost(s, s.Hosts[1])
		m := newManager(t, s, nil)
		expectErr(t, m, h, remote.ErrHostKeyUnknown, "--accept-new-host-keys", "ssh-keyscan -p", s.KnownHosts)

		acc := newManager(t, s, func(o *remote.Options) { o.AcceptNewHostKeys = true })
		if res := execOK(t, acc, cmd(h)); res.Stdout != "ok\n" {
			t.Errorf("stdout %q", res.Stdout)
		}
		if mt := acc.Metrics(); mt.HostKeysAdded != 1 {
			t.Errorf("HostKeysAdded = %d", mt.HostKeysAdded)
		}
		b, _ := os.ReadFile(s.KnownHosts)
		want := fmt.Sprintf("[%s]:%d %s", s.Hosts[1].Addr, s.Hosts[1].Port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.Hosts[1].HostKey))))
		if !strings.Contains(string(b), want) {
			t.Errorf("known_hosts lacks %q:\n%s", want, b)
		}
		// Recorded: a manager without the option now trusts it (the file
		// changed under the first manager too, which rereads it).
		execOK(t, m, cmd(h))
	})

	t.Run("changed host key", func(t *testing.T) {
		t.Parallel()
		s.ChangeHostKey(s.Hosts[2])
		h := engineHost(s, s.Hosts[2])
		for _, accept := range []bool{false, true} {
			m := newManager(t, s, func(o *remote.Options) { o.AcceptNewHostKeys = accept })
			expectErr(t, m, h, remote.ErrHostKeyChanged, s.KnownHosts+":", "ssh-keygen -R", "intercepting")
			if mt := m.Metrics(); mt.Dials != 1 || mt.HostKeysAdded != 0 {
				t.Errorf("accept=%v: %+v", accept, mt)
			}
		}
	})
}

type key struct {
	path   string
	signer ssh.Signer
}

// writeKey writes a new ed25519 key, encrypted when passphrase is set.
func writeKey(t testing.TB, dir string, passphrase []byte) key {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	var block *pem.Block
	if passphrase != nil {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "", passphrase)
	} else {
		block, err = ssh.MarshalPrivateKey(priv, "")
	}
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "key")
	if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	return key{path: p, signer: signer}
}

func TestAgentAndEncryptedKey(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	h := engineHost(s, s.Hosts[0])

	// The authorized key, on disk encrypted.
	b, err := os.ReadFile(s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKeyWithPassphrase(raw, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	enc := filepath.Join(t.TempDir(), "id_enc")
	if err := os.WriteFile(enc, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}

	m := newManager(t, s, func(o *remote.Options) { o.IdentityFiles = []string{enc} })
	_, err = m.Exec(context.Background(), &engine.Command{JobID: "agent", StepKey: "1", Host: h, Cmd: "true"})
	if !errors.Is(err, remote.ErrAuth) || !strings.Contains(err.Error(), "encrypted") || !strings.Contains(err.Error(), "ssh-add") {
		t.Fatalf("encrypted key without agent: %v", err)
	}

	// An ssh-agent (the real protocol over a unix socket) holding it.
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	keyring := agent.NewKeyring()
	if err := keyring.Add(agent.AddedKey{PrivateKey: raw}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go agent.ServeAgent(keyring, c)
		}
	}()
	m = newManager(t, s, func(o *remote.Options) { o.IdentityFiles = []string{enc}; o.AgentSocket = sock })
	res := execOK(t, m, &engine.Command{JobID: "agent", StepKey: "2", Host: h, Cmd: "echo via agent"})
	if res.Stdout != "via agent\n" {
		t.Errorf("stdout %q", res.Stdout)
	}
}

func TestSSHConfigAndProxyJump(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 2)
	jump, behind := s.Hosts[0], s.Hosts[1]
	cfg := filepath.Join(t.TempDir(), "config")
	text := fmt.Sprintf(`Host jump
  HostName %s
  Port %d
  User %s

Host web*
  HostName %s
  Port %d
  User %s
  IdentityFile %s

Host behind
  HostName %s
  Port %d
  User %s
  ProxyJump jump
`, jump.Addr, jump.Port, s.User, jump.Addr, jump.Port, s.User, s.ClientKey, behind.Addr, behind.Port, s.User)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("host pattern", func(t *testing.T) {
		t.Parallel()
		// The key comes from ssh_config alone.
		m := newManager(t, s, func(o *remote.Options) { o.SSHConfig = cfg; o.IdentityFiles = nil; o.User = "nobody" })
		res := execOK(t, m, &engine.Command{JobID: "cfg", StepKey: "1", Host: engine.Host{Name: "web7"}, Cmd: "id -un"})
		if res.Stdout != s.User+"\n" {
			t.Errorf("login %q", res.Stdout)
		}
		// The inventory's fields override ssh_config.
		_, err := m.Exec(context.Background(), &engine.Command{JobID: "cfg", StepKey: "2", Host: engine.Host{Name: "web7", Addr: "web7", Port: s.RefusingHost().Port}, Cmd: "true"})
		if !errors.Is(err, remote.ErrUnreachable) {
			t.Errorf("explicit port ignored: %v", err)
		}
		// A destination as a script writes it.
		res = execOK(t, m, &engine.Command{JobID: "cfg", StepKey: "3", Host: engine.Host{Name: s.User + "@web1:" + fmt.Sprint(jump.Port)}, Cmd: "echo dest"})
		if res.Stdout != "dest\n" {
			t.Errorf("stdout %q", res.Stdout)
		}
	})

	t.Run("proxy jump", func(t *testing.T) {
		t.Parallel()
		m := newManager(t, s, func(o *remote.Options) { o.SSHConfig = cfg })
		for i := 0; i < 3; i++ {
			res := execOK(t, m, &engine.Command{JobID: "jump", StepKey: fmt.Sprint(i), Host: engine.Host{Name: "behind"}, Cmd: "echo $SSH_CONNECTION"})
			// The target sees the connection arrive on its own address.
			if f := strings.Fields(res.Stdout); len(f) != 4 || f[2] != behind.Addr {
				t.Errorf("SSH_CONNECTION %q", res.Stdout)
			}
		}
		// One connection to the hop and one through it to the target.
		if mt := m.Metrics(); mt.Handshakes != 2 || mt.ConnsOpen != 2 {
			t.Errorf("metrics %+v, want 2 handshakes", mt)
		}
		// The hop's connection is shared with direct use of it.
		execOK(t, m, &engine.Command{JobID: "jump", StepKey: "direct", Host: engine.Host{Name: "jump"}, Cmd: "true"})
		if mt := m.Metrics(); mt.Handshakes != 2 {
			t.Errorf("metrics %+v, want the hop's connection reused", mt)
		}
	})
}
