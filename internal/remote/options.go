package remote

import (
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"time"
)

// Options configure a Manager. The zero value means: read ~/.ssh/config
// and ~/.ssh/known_hosts, use ssh-agent through SSH_AUTH_SOCK and the
// default keys, and the limits documented on each field.
type Options struct {
	// SSHConfig is the ssh_config file to read. Empty means
	// ~/.ssh/config (when it exists); "none" reads none.
	SSHConfig string
	// KnownHosts are the known_hosts files that verify host keys. Empty
	// means ~/.ssh/known_hosts and /etc/ssh/ssh_known_hosts. Keys
	// accepted with AcceptNewHostKeys go to the first file.
	KnownHosts []string
	// AcceptNewHostKeys records the key of a host that known_hosts does
	// not know yet, and logs it at warning level. It never accepts a key
	// that differs from a recorded one.
	AcceptNewHostKeys bool
	// IdentityFiles are keys tried after those ssh_config names for a
	// host. When neither names any, ~/.ssh/id_ed25519, id_rsa and
	// id_ecdsa are tried. Encrypted keys are used only through ssh-agent.
	IdentityFiles []string
	// AgentSocket is ssh-agent's socket. Empty means $SSH_AUTH_SOCK as it
	// was when New ran; "none" disables the agent.
	AgentSocket string
	// User is the login when neither the host nor ssh_config names one.
	// Empty means the local user.
	User string
	// HomeDir is the local home for ~ in paths. Empty means the user's.
	HomeDir string

	// MaxSessionsPerConn caps sessions run at once over one connection.
	// Default 10, OpenSSH's MaxSessions.
	MaxSessionsPerConn int
	// MaxConnsPerHost caps connections to one host (one address, port,
	// user and set of credentials). Default 1.
	MaxConnsPerHost int
	// MaxHandshakes caps connection set-ups (TCP connect and SSH
	// handshake) in progress across all hosts. Default 32, which stays
	// under sshd's default MaxStartups of 10 per host while letting a
	// fleet connect quickly.
	MaxHandshakes int
	// ConnectTimeout bounds one connection attempt. Default 15s.
	ConnectTimeout time.Duration
	// ConnectRetries is how many more attempts follow a failed
	// connection (network failures only; a refused key or a bad host key
	// is not retried). It also bounds re-attaching to a command whose
	// connection dropped. Default 2; negative means none.
	ConnectRetries int
	// RetryInterval separates connection attempts. Default 2s.
	RetryInterval time.Duration
	// KeepaliveInterval is how often an open connection is probed; a
	// probe unanswered within the interval marks it broken. Default 15s;
	// negative disables.
	KeepaliveInterval time.Duration
	// SweepInterval is the idle sweeper's period: a connection idle
	// through two sweeps is closed. Default 60s.
	SweepInterval time.Duration

	// RunDir is where supervised commands keep their state on targets,
	// relative to the login's home unless absolute. Default .drover/run.
	RunDir string
	// KillGrace is how long a stopped command's process group has between
	// SIGTERM and SIGKILL. Default 2s.
	KillGrace time.Duration

	// Logger receives connection events (host keys added at warning
	// level). Nil discards them.
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.HomeDir == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return o, fmt.Errorf("home directory for ~/.ssh: %w (set Options.HomeDir)", err)
		}
		o.HomeDir = h
	}
	if o.User == "" {
		if u, err := user.Current(); err == nil {
			o.User = u.Username
		} else if u := os.Getenv("USER"); u != "" {
			o.User = u
		} else {
			return o, fmt.Errorf("local user name: %w (set Options.User)", err)
		}
	}
	ssh := filepath.Join(o.HomeDir, ".ssh")
	switch o.SSHConfig {
	case "":
		if p := filepath.Join(ssh, "config"); fileExists(p) {
			o.SSHConfig = p
		}
	case "none":
		o.SSHConfig = ""
	}
	if len(o.KnownHosts) == 0 {
		o.KnownHosts = []string{filepath.Join(ssh, "known_hosts"), "/etc/ssh/ssh_known_hosts"}
	}
	switch o.AgentSocket {
	case "":
		o.AgentSocket = os.Getenv("SSH_AUTH_SOCK")
	case "none":
		o.AgentSocket = ""
	}
	if o.MaxSessionsPerConn <= 0 {
		o.MaxSessionsPerConn = 10
	}
	if o.MaxConnsPerHost <= 0 {
		o.MaxConnsPerHost = 1
	}
	if o.MaxHandshakes <= 0 {
		o.MaxHandshakes = 32
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 15 * time.Second
	}
	if o.ConnectRetries == 0 {
		o.ConnectRetries = 2
	} else if o.ConnectRetries < 0 {
		o.ConnectRetries = 0
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = 2 * time.Second
	}
	if o.KeepaliveInterval == 0 {
		o.KeepaliveInterval = 15 * time.Second
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = time.Minute
	}
	if o.RunDir == "" {
		o.RunDir = ".drover/run"
	}
	if o.KillGrace <= 0 {
		o.KillGrace = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
