package remote

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/drover/drover/internal/engine"
	sshconfig "github.com/kevinburke/ssh_config"
)

// target is a host resolved the way ssh(1) would: the engine's explicit
// fields first, then ssh_config, then defaults.
type target struct {
	name           string // as the script or inventory named it
	hostname       string // what is dialled
	port           int
	user           string
	identityFiles  []string
	identitiesOnly bool
	agentSock      string
	jump           *target
	key            poolKey
}

// poolKey identifies connections that may be shared: same place, same
// login, same credentials and the same route.
type poolKey struct {
	addr string
	port int
	user string
	cred string
}

func (t *target) addr() string { return net.JoinHostPort(t.hostname, strconv.Itoa(t.port)) }

// String is user@address:port, with the jump hosts when there are.
func (t *target) String() string {
	s := t.user + "@" + t.addr()
	if t.jump != nil {
		s += " via " + t.jump.String()
	}
	return s
}

func (t *target) err(kind, cause error, hint string) *Error {
	return &Error{Host: t.name, Addr: t.String(), Kind: kind, Err: cause, Hint: hint}
}

// sshConfig wraps the parsed ssh_config, which may be absent.
type sshConfig struct {
	path string
	cfg  *sshconfig.Config
}

func loadSSHConfig(path string) (*sshConfig, error) {
	c := &sshConfig{path: path}
	if path == "" {
		return c, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read ssh config: %w", err)
	}
	defer f.Close()
	if c.cfg, err = sshconfig.Decode(f); err != nil {
		return nil, fmt.Errorf("parse ssh config %s: %w", path, err)
	}
	return c, nil
}

func (c *sshConfig) get(alias, key string) string {
	if c.cfg == nil {
		return ""
	}
	v, _ := c.cfg.Get(alias, key)
	return strings.TrimSpace(v)
}

func (c *sshConfig) getAll(alias, key string) []string {
	if c.cfg == nil {
		return nil
	}
	v, _ := c.cfg.GetAll(alias, key)
	return v
}

// resolve turns an engine host into a target.
func (m *Manager) resolve(h engine.Host) (*target, error) {
	alias, user, port := h.Addr, h.User, h.Port
	if alias == "" {
		// Not from an inventory: an SSH destination as the script wrote
		// it, [user@]host[:port].
		var err error
		alias, user, port, err = parseDestination(h.Name, user, port)
		if err != nil {
			return nil, &Error{Host: h.Name, Kind: ErrUnreachable, Err: err, Hint: "write the host as [user@]host[:port]"}
		}
	}
	name := h.Name
	if name == "" {
		name = alias
	}
	var keyFile string
	if len(h.Vars) > 0 {
		var vars map[string]any
		if json.Unmarshal(h.Vars, &vars) == nil {
			if v, ok := vars["ansible_ssh_private_key_file"].(string); ok && v != "" {
				keyFile = v
			}
		}
	}
	return m.resolveAlias(name, alias, user, port, keyFile, "", 0)
}

func parseDestination(dest, user string, port int) (string, string, int, error) {
	d := strings.TrimPrefix(dest, "ssh://")
	if i := strings.LastIndexByte(d, '@'); i >= 0 {
		if user == "" {
			user = d[:i]
		}
		d = d[i+1:]
	}
	if h, p, err := net.SplitHostPort(d); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", "", 0, fmt.Errorf("bad port in %q", dest)
		}
		if port == 0 {
			port = n
		}
		d = h
	}
	if d == "" {
		return "", "", 0, fmt.Errorf("no host in %q", dest)
	}
	return d, user, port, nil
}

// resolveAlias applies ssh_config to alias. jumpChain, when set, is the
// ProxyJump list this hop was reached through (OpenSSH's "a,b,c": c is
// reached via b, b via a), which replaces the hop's own ProxyJump.
func (m *Manager) resolveAlias(name, alias, user string, port int, keyFile, jumpChain string, depth int) (*target, error) {
	if depth > 8 {
		return nil, &Error{Host: name, Kind: ErrUnreachable, Err: fmt.Errorf("ProxyJump chain deeper than 8 hops"), Hint: "check ProxyJump in " + m.sshcfg.path + " for a loop"}
	}
	cfg := m.sshcfg
	t := &target{name: name, hostname: alias, agentSock: m.opts.AgentSocket}
	if hn := cfg.get(alias, "HostName"); hn != "" {
		t.hostname = strings.ReplaceAll(hn, "%h", alias)
	}
	t.user = user
	if t.user == "" {
		t.user = cfg.get(alias, "User")
	}
	if t.user == "" {
		t.user = m.opts.User
	}
	t.port = port
	if t.port == 0 {
		if p := cfg.get(alias, "Port"); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n < 1 || n > 65535 {
				return nil, &Error{Host: name, Kind: ErrUnreachable, Err: fmt.Errorf("bad Port %q for %s in %s", p, alias, cfg.path)}
			}
			t.port = n
		}
	}
	if t.port == 0 {
		t.port = 22
	}
	t.identitiesOnly = strings.EqualFold(cfg.get(alias, "IdentitiesOnly"), "yes")
	seen := map[string]bool{}
	addKey := func(p string) {
		p = m.expandPath(p, t, alias)
		if !seen[p] {
			seen[p] = true
			t.identityFiles = append(t.identityFiles, p)
		}
	}
	if keyFile != "" {
		addKey(keyFile)
	}
	for _, f := range cfg.getAll(alias, "IdentityFile") {
		addKey(f)
	}
	for _, f := range m.opts.IdentityFiles {
		addKey(f)
	}
	if len(t.identityFiles) == 0 {
		for _, f := range []string{"id_ed25519", "id_rsa", "id_ecdsa"} {
			if p := filepath.Join(m.opts.HomeDir, ".ssh", f); fileExists(p) {
				addKey(p)
			}
		}
	}

	chain := jumpChain
	if chain == "" {
		chain = cfg.get(alias, "ProxyJump")
	}
	if chain != "" && !strings.EqualFold(chain, "none") {
		hops := strings.Split(chain, ",")
		last := strings.TrimSpace(hops[len(hops)-1])
		rest := strings.Join(hops[:len(hops)-1], ",")
		jAlias, jUser, jPort, err := parseDestination(last, "", 0)
		if err != nil {
			return nil, &Error{Host: name, Kind: ErrUnreachable, Err: fmt.Errorf("ProxyJump %q: %w", chain, err)}
		}
		// With rest empty, the first hop uses its own ssh_config,
		// ProxyJump included, as OpenSSH does.
		t.jump, err = m.resolveAlias(jAlias, jAlias, jUser, jPort, "", rest, depth+1)
		if err != nil {
			return nil, err
		}
	}

	h := sha256.New()
	fmt.Fprintf(h, "%q %q %v", t.identityFiles, t.agentSock, t.identitiesOnly)
	if t.jump != nil {
		fmt.Fprintf(h, " via %+v", t.jump.key)
	}
	t.key = poolKey{addr: t.hostname, port: t.port, user: t.user, cred: hex.EncodeToString(h.Sum(nil)[:8])}
	return t, nil
}

// expandPath expands ~ and the ssh_config tokens IdentityFile accepts.
func (m *Manager) expandPath(p string, t *target, alias string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		p = filepath.Join(m.opts.HomeDir, p[1:])
	}
	r := strings.NewReplacer("%d", m.opts.HomeDir, "%u", m.opts.User, "%h", t.hostname, "%n", alias, "%r", t.user, "%p", strconv.Itoa(t.port), "%%", "%")
	return r.Replace(p)
}
