package remote

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// identity is one key file as loaded, cached for the manager's life so a
// fleet of hosts sharing a key reads it once.
type identity struct {
	path   string
	signer ssh.Signer    // nil when the key cannot be used directly
	pub    ssh.PublicKey // from the key or its .pub file; may be nil
	note   string        // why signer is nil
}

type keyCache struct {
	mu   sync.Mutex
	keys map[string]*identity
}

func (c *keyCache) load(path string) *identity {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id, ok := c.keys[path]; ok {
		return id
	}
	id := readIdentity(path)
	if c.keys == nil {
		c.keys = map[string]*identity{}
	}
	c.keys[path] = id
	return id
}

func readIdentity(path string) *identity {
	id := &identity{path: path}
	if b, err := os.ReadFile(path + ".pub"); err == nil {
		if pub, _, _, _, err := ssh.ParseAuthorizedKey(b); err == nil {
			id.pub = pub
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		id.note = "unreadable: " + err.Error()
		if errors.Is(err, os.ErrNotExist) {
			id.note = "no such file"
		}
		return id
	}
	signer, err := ssh.ParsePrivateKey(b)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing):
		if missing.PublicKey != nil {
			id.pub = missing.PublicKey
		}
		id.note = "encrypted (load it into ssh-agent with ssh-add)"
	case err != nil:
		id.note = "not a private key: " + err.Error()
	default:
		id.signer = signer
		id.pub = signer.PublicKey()
	}
	return id
}

// auth is the credentials offered in one handshake.
type auth struct {
	signers []ssh.Signer
	offered []string // descriptions, for the error when all are refused
	agent   net.Conn
}

func (a *auth) close() {
	if a.agent != nil {
		a.agent.Close()
	}
}

// authFor gathers t's keys: ssh-agent's first (so encrypted keys work
// through it), then the identity files the agent does not already hold.
// With IdentitiesOnly, agent keys are used only for the identity files.
func (m *Manager) authFor(t *target) *auth {
	a := &auth{}
	var files []*identity
	for _, p := range t.identityFiles {
		files = append(files, m.keys.load(p))
	}
	have := map[string]bool{}
	if t.agentSock != "" {
		c, err := net.DialTimeout("unix", t.agentSock, 5*time.Second)
		if err != nil {
			a.offered = append(a.offered, fmt.Sprintf("ssh-agent at %s: unreachable (%v)", t.agentSock, err))
		} else {
			a.agent = c
			signers, err := agent.NewClient(c).Signers()
			if err != nil {
				a.offered = append(a.offered, fmt.Sprintf("ssh-agent at %s: %v", t.agentSock, err))
			}
			wanted := map[string]bool{}
			for _, f := range files {
				if f.pub != nil {
					wanted[string(f.pub.Marshal())] = true
				}
			}
			for _, s := range signers {
				blob := string(s.PublicKey().Marshal())
				if t.identitiesOnly && !wanted[blob] {
					continue
				}
				have[blob] = true
				a.signers = append(a.signers, s)
				a.offered = append(a.offered, "ssh-agent key "+describeKey(s.PublicKey()))
			}
		}
	}
	for _, f := range files {
		switch {
		case f.signer != nil:
			if have[string(f.pub.Marshal())] {
				continue
			}
			have[string(f.pub.Marshal())] = true
			a.signers = append(a.signers, f.signer)
			a.offered = append(a.offered, f.path+" "+describeKey(f.pub))
		case f.pub != nil && have[string(f.pub.Marshal())]:
			// Encrypted, but the agent holds it: already offered.
		default:
			a.offered = append(a.offered, f.path+": not used, "+f.note)
		}
	}
	return a
}

func describeKey(k ssh.PublicKey) string {
	return fmt.Sprintf("(%s %s)", strings.TrimPrefix(strings.ToUpper(k.Type()), "SSH-"), ssh.FingerprintSHA256(k))
}
