// Package sshtest starts the real OpenSSH server for tests: one sshd per 16
// loopback addresses (127.0.0.2, 127.0.0.3, ...), each address a "host",
// with generated host keys, a client key, authorized_keys and a
// known_hosts file in a private directory. Everything is torn down at
// t.Cleanup.
//
// It depends on nothing of drover's, so that any package's tests (the
// engine's included) may import it without an import cycle:
//
//	s := sshtest.Start(t, 3) // skips when sshd is not installed
//	m, err := remote.New(remote.Options{
//		SSHConfig:     s.SSHConfig,          // empty: ignore ~/.ssh/config
//		KnownHosts:    []string{s.KnownHosts},
//		IdentityFiles: []string{s.ClientKey},
//		AgentSocket:   "none",
//		User:          s.User,
//		HomeDir:       t.TempDir(),          // no default keys from ~/.ssh
//		RunDir:        s.UserDir + "/run",   // step state dies with the test
//	})
//	h := s.Hosts[0] // engine.Host{Name: h.Name, Addr: h.Addr, Port: h.Port, User: s.User}
//
// or, for the CLI, s.WriteInventory("hosts.ini") and --inventory.
//
// When running as root, hosts log in as a dedicated user (drovertest,
// created with useradd when missing) whose shell is /bin/sh and whose home
// is clean: root's interactive shell set-up here costs ~250 ms per session,
// which no managed host would pay. Otherwise hosts log in as the current
// user.
package sshtest

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHD is where Debian's openssh-server installs the daemon.
const SSHD = "/usr/sbin/sshd"

// TestUser is the login created for the test hosts when running as root.
const TestUser = "drovertest"

// maxListen is how many ListenAddress lines one sshd accepts.
const maxListen = 16

// Host is one test host: an address and port served by a real sshd.
type Host struct {
	Name    string // h1, h2, ...
	Addr    string
	Port    int
	HostKey ssh.PublicKey
	daemon  *daemon
}

// HostPort returns "addr:port".
func (h Host) HostPort() string { return net.JoinHostPort(h.Addr, strconv.Itoa(h.Port)) }

// Server is a set of test hosts.
type Server struct {
	// Dir is the private directory holding keys, configs and logs.
	Dir string
	// User is the login user on every host.
	User string
	// Home is that user's home directory (the hosts are this machine).
	Home string
	// UserDir is a scratch directory owned by User, removed at cleanup:
	// a place where remote commands and copies may write.
	UserDir string
	// ClientKey is the path of the client's unencrypted ed25519 key,
	// which every host authorizes; ClientSigner is the same key.
	ClientKey    string
	ClientSigner ssh.Signer
	// KnownHosts is a known_hosts file holding every host's key.
	KnownHosts string
	// SSHConfig is an empty ssh_config, so that clients under test do not
	// read the developer's ~/.ssh/config.
	SSHConfig string
	// Hosts are the started hosts, in address order.
	Hosts []Host

	t       testing.TB
	uid     int
	gid     int
	mu      sync.Mutex // guards daemons, known_hosts edits and proxies
	daemons []*daemon
	closers []io.Closer
	proxies []*proxy
}

type daemon struct {
	cmd    *exec.Cmd
	port   int
	addrs  []string
	log    string
	exited chan struct{}
}

// Start starts n hosts (n >= 1) and registers their teardown with
// t.Cleanup. It skips the test when sshd is not installed, unless
// DROVER_REQUIRE_SSHD=1 (CI), when it fails.
func Start(t testing.TB, n int) *Server {
	t.Helper()
	if _, err := os.Stat(SSHD); err != nil {
		msg := fmt.Sprintf("sshtest: %s not found: install openssh-server", SSHD)
		if os.Getenv("DROVER_REQUIRE_SSHD") == "1" {
			t.Fatalf("%s (DROVER_REQUIRE_SSHD=1)", msg)
		}
		t.Skip(msg)
	}
	if n < 1 {
		n = 1
	}
	s := &Server{t: t, Dir: t.TempDir()}
	// sshd reads authorized_keys as the login user, who must be able to
	// reach it through t.TempDir's private parents.
	for _, d := range []string{s.Dir, filepath.Dir(s.Dir)} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatalf("sshtest: %v", err)
		}
	}
	if err := s.setupUser(); err != nil {
		t.Fatalf("sshtest: %v", err)
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil && os.Geteuid() == 0 {
		t.Fatalf("sshtest: sshd's privilege separation directory: %v", err)
	}

	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s.ClientSigner, err = ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	s.ClientKey = filepath.Join(s.Dir, "id_ed25519")
	if err := writePrivateKey(s.ClientKey, priv); err != nil {
		t.Fatal(err)
	}
	authorized := filepath.Join(s.Dir, "authorized_keys")
	if err := os.WriteFile(authorized, ssh.MarshalAuthorizedKey(s.ClientSigner.PublicKey()), 0o644); err != nil {
		t.Fatal(err)
	}
	s.SSHConfig = filepath.Join(s.Dir, "ssh_config")
	if err := os.WriteFile(s.SSHConfig, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s.KnownHosts = filepath.Join(s.Dir, "known_hosts")

	t.Cleanup(s.close)
	var known strings.Builder
	for first := 0; first < n; first += maxListen {
		count := min(maxListen, n-first)
		addrs := make([]string, count)
		for i := range addrs {
			addrs[i] = loopback(first + i)
		}
		d, key, err := s.startDaemon(len(s.daemons), addrs, authorized)
		if err != nil {
			t.Fatalf("sshtest: %v", err)
		}
		for i, a := range addrs {
			h := Host{Name: "h" + strconv.Itoa(first+i+1), Addr: a, Port: d.port, HostKey: key, daemon: d}
			s.Hosts = append(s.Hosts, h)
			known.WriteString(knownhosts.Line([]string{knownhosts.Normalize(h.HostPort())}, key) + "\n")
		}
	}
	if err := os.WriteFile(s.KnownHosts, []byte(known.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

// loopback returns the i-th test address, starting at 127.0.0.2 (127.0.0.1
// is left to whatever else runs on the machine).
func loopback(i int) string {
	i += 2
	return fmt.Sprintf("127.0.%d.%d", i/256, i%256)
}

func (s *Server) setupUser() error {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return err
		}
		s.User, s.Home = u.Username, u.HomeDir
		s.uid, s.gid = os.Getuid(), os.Getgid()
		s.UserDir = filepath.Join(s.Dir, "userdir")
		return os.Mkdir(s.UserDir, 0o755)
	}
	u, err := user.Lookup(TestUser)
	if err != nil {
		// "*" rather than useradd's default "!" password: sshd without
		// PAM refuses even key logins to a locked ("!") account.
		out, aerr := exec.Command("useradd", "--system", "--shell", "/bin/sh",
			"--home-dir", "/var/lib/"+TestUser, "--create-home", "--password", "*", TestUser).CombinedOutput()
		// A parallel test binary may have created it meanwhile.
		if u, err = user.Lookup(TestUser); err != nil {
			return fmt.Errorf("create user %s: %v: %s", TestUser, aerr, out)
		}
	}
	s.User, s.Home = u.Username, u.HomeDir
	s.uid, _ = strconv.Atoi(u.Uid)
	s.gid, _ = strconv.Atoi(u.Gid)
	if err := os.MkdirAll(s.Home, 0o755); err != nil {
		return err
	}
	if err := os.Chown(s.Home, s.uid, s.gid); err != nil {
		return err
	}
	s.UserDir, err = os.MkdirTemp(s.Home, "sshtest-")
	if err != nil {
		return err
	}
	s.t.Cleanup(func() { os.RemoveAll(s.UserDir) })
	if err := os.Chmod(s.UserDir, 0o755); err != nil {
		return err
	}
	return os.Chown(s.UserDir, s.uid, s.gid)
}

func writePrivateKey(path string, key ed25519.PrivateKey) error {
	block, err := ssh.MarshalPrivateKey(key, "")
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
}

func (s *Server) startDaemon(idx int, addrs []string, authorized string) (*daemon, ssh.PublicKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	keyPath := filepath.Join(s.Dir, fmt.Sprintf("host%d_ed25519", idx))
	if err := writePrivateKey(keyPath, priv); err != nil {
		return nil, nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 8; attempt++ {
		port, err := freePort(addrs)
		if err != nil {
			lastErr = err
			continue
		}
		var cfg strings.Builder
		for _, a := range addrs {
			fmt.Fprintf(&cfg, "ListenAddress %s:%d\n", a, port)
		}
		fmt.Fprintf(&cfg, `HostKey %s
PidFile none
AuthorizedKeysFile %s
AllowUsers %s
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 1000
MaxSessions 10
AllowTcpForwarding yes
Subsystem sftp internal-sftp
LogLevel VERBOSE
`, keyPath, authorized, s.User)
		cfgPath := filepath.Join(s.Dir, fmt.Sprintf("sshd%d_config", idx))
		if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
			return nil, nil, err
		}
		d := &daemon{port: port, addrs: addrs, log: filepath.Join(s.Dir, fmt.Sprintf("sshd%d.log", idx)), exited: make(chan struct{})}
		d.cmd = exec.Command(SSHD, "-D", "-f", cfgPath, "-E", d.log)
		if err := d.cmd.Start(); err != nil {
			return nil, nil, fmt.Errorf("start sshd: %w", err)
		}
		go func() { d.cmd.Wait(); close(d.exited) }()
		s.mu.Lock()
		s.daemons = append(s.daemons, d)
		s.mu.Unlock()
		if err := d.waitReady(); err != nil {
			// Most likely another process took the port between the probe
			// and sshd's bind: try another one.
			lastErr = err
			s.killDaemon(d)
			continue
		}
		return d, signer.PublicKey(), nil
	}
	return nil, nil, fmt.Errorf("no sshd could start: %w", lastErr)
}

func (d *daemon) waitReady() error {
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range d.addrs {
		for {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(a, strconv.Itoa(d.port)), time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-d.exited:
				b, _ := os.ReadFile(d.log)
				return fmt.Errorf("sshd exited: %s", strings.TrimSpace(string(b)))
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("sshd not listening on %s:%d: %w", a, d.port, err)
			}
		}
	}
	return nil
}

// freePort finds a port above 20000 that is free on every address. It
// picks at random so that parallel test binaries rarely collide, and the
// caller retries if one did.
func freePort(addrs []string) (int, error) {
	for tries := 0; tries < 100; tries++ {
		port := 20000 + mrand.IntN(40000)
		ok := true
		var ls []net.Listener
		for _, a := range addrs {
			l, err := net.Listen("tcp", net.JoinHostPort(a, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if ok {
			return port, nil
		}
	}
	return 0, errors.New("no free port found above 20000")
}

func (s *Server) close() {
	s.mu.Lock()
	daemons := s.daemons
	closers := s.closers
	s.mu.Unlock()
	for _, c := range closers {
		c.Close()
	}
	for _, d := range daemons {
		s.killDaemon(d)
	}
	if s.t.Failed() || testing.Verbose() {
		for _, d := range daemons {
			if b, err := os.ReadFile(d.log); err == nil && len(b) > 0 {
				s.t.Logf("sshtest: sshd on port %d logged:\n%s", d.port, tail(b, 4000))
			}
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// killDaemon kills the listener first, so that it forks no new
// connection, then every per-connection sshd it left.
func (s *Server) killDaemon(d *daemon) {
	pid := d.cmd.Process.Pid
	children := sshdDescendants(pid)
	d.cmd.Process.Kill()
	<-d.exited
	for _, c := range children {
		syscall.Kill(c, syscall.SIGKILL)
	}
	for _, c := range sshdDescendants(pid) {
		syscall.Kill(c, syscall.SIGKILL)
	}
}

// Stop kills the sshd serving h and all its connections: h, and every
// host that shares that sshd (hosts come 16 to an sshd), then refuse
// connections.
func (s *Server) Stop(h Host) {
	s.killDaemon(h.daemon)
}

// DropConnections kills the per-connection sshd processes of connections
// to h, as a network failure or a reboot would end them; commands started
// over them detached from their session are not touched. It returns how
// many processes it killed.
func (s *Server) DropConnections(h Host) int {
	s.t.Helper()
	killed := 0
	// sshd forks a connection's post-authentication child about when the
	// client learns it is logged in: scan again until no process is left
	// holding the connection.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		inodes, err := socketInodes(h.Addr, h.Port)
		if err != nil {
			s.t.Fatalf("sshtest: %v", err)
		}
		n := 0
		// Every sshd, not only the daemon's descendants: a connection's
		// post-authentication child forked just after a scan is orphaned
		// when its monitor is killed, and reparented away from the daemon.
		// The inodes are those of this host's port alone.
		for _, pid := range sshdDescendants(0) {
			if holdsSocket(pid, inodes) && syscall.Kill(pid, syscall.SIGKILL) == nil {
				n++
			}
		}
		if n == 0 {
			break
		}
		killed += n
		time.Sleep(20 * time.Millisecond)
	}
	return killed
}

// ForgetHostKey removes h's entry from KnownHosts: h's key is then
// unknown to a client that reads it.
func (s *Server) ForgetHostKey(h Host) {
	s.t.Helper()
	s.editKnownHosts(h, "")
}

// ChangeHostKey replaces h's entry in KnownHosts with another key, as if
// the host had been reinstalled (or someone were in the middle).
func (s *Server) ChangeHostKey(h Host) {
	s.t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		s.t.Fatal(err)
	}
	other, err := ssh.NewPublicKey(pub)
	if err != nil {
		s.t.Fatal(err)
	}
	s.editKnownHosts(h, knownhosts.Line([]string{knownhosts.Normalize(h.HostPort())}, other))
}

func (s *Server) editKnownHosts(h Host, replacement string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, err := os.ReadFile(s.KnownHosts)
	if err != nil {
		s.t.Fatal(err)
	}
	prefix := knownhosts.Normalize(h.HostPort()) + " "
	var out []string
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if strings.HasPrefix(line, prefix) {
			if replacement != "" {
				out = append(out, replacement+"\n")
			}
			continue
		}
		out = append(out, line)
	}
	if err := os.WriteFile(s.KnownHosts, []byte(strings.Join(out, "")), 0o600); err != nil {
		s.t.Fatal(err)
	}
}

// RefusingHost returns a host on a port where nothing listens: connecting
// to it is refused.
func (s *Server) RefusingHost() Host {
	s.t.Helper()
	addr := loopback(0)
	port, err := freePort([]string{addr})
	if err != nil {
		s.t.Fatal(err)
	}
	return Host{Name: "refusing", Addr: addr, Port: port}
}

// SlowHost returns a host that reaches h through a proxy adding delay to
// every write in both directions, like a distant network: an SSH
// handshake then takes several times delay. KnownHosts gets its key.
func (s *Server) SlowHost(h Host, delay time.Duration) Host {
	s.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatal(err)
	}
	p := &proxy{l: l, target: h.HostPort(), delay: delay}
	s.mu.Lock()
	s.closers = append(s.closers, p)
	s.proxies = append(s.proxies, p)
	s.mu.Unlock()
	go p.serve()
	slow := Host{Name: h.Name + "-slow", Addr: "127.0.0.1", Port: l.Addr().(*net.TCPAddr).Port, HostKey: h.HostKey, daemon: h.daemon}
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := os.OpenFile(s.KnownHosts, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(knownhosts.Line([]string{knownhosts.Normalize(slow.HostPort())}, h.HostKey) + "\n"); err != nil {
		s.t.Fatal(err)
	}
	return slow
}

// Freeze makes the link to a host from SlowHost go dead: no byte passes
// either way and no connection is closed, as when a network path
// silently fails. Only keepalives notice.
func (s *Server) Freeze(h Host) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.proxies {
		if p.l.Addr().(*net.TCPAddr).Port == h.Port {
			p.frozen.Store(true)
			return
		}
	}
	s.t.Fatalf("sshtest: %s is not a host from SlowHost", h.Name)
}

// WriteInventory writes an Ansible INI inventory of the hosts (group
// "test") with their address, port and user, and returns its path.
func (s *Server) WriteInventory(name string) string {
	s.t.Helper()
	var b strings.Builder
	b.WriteString("[test]\n")
	for _, h := range s.Hosts {
		fmt.Fprintf(&b, "%s ansible_host=%s ansible_port=%d ansible_user=%s\n", h.Name, h.Addr, h.Port, s.User)
	}
	p := filepath.Join(s.Dir, name)
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		s.t.Fatal(err)
	}
	return p
}

// Chown gives path to the hosts' login user, for files a test prepares
// for remote commands.
func (s *Server) Chown(path string) {
	s.t.Helper()
	if err := os.Lchown(path, s.uid, s.gid); err != nil {
		s.t.Fatal(err)
	}
}

type proxy struct {
	l      net.Listener
	target string
	delay  time.Duration
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns = append(p.conns, c)
	return true
}

func (p *proxy) handle(c net.Conn) {
	if !p.track(c) {
		return
	}
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(u) {
		c.Close()
		return
	}
	go p.pipe(u, c)
	p.pipe(c, u)
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32*1024)
	for {
		n, err := src.Read(buf)
		for p.frozen.Load() {
			// A dead link: nothing passes, nothing is closed.
			time.Sleep(10 * time.Millisecond)
			if p.isClosed() {
				return
			}
		}
		if n > 0 {
			time.Sleep(p.delay)
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return p.l.Close()
}

// sshdDescendants lists the processes named sshd below pid (every one
// with pid 0), from /proc.
func sshdDescendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	comm := map[int]string{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parens.
		st := string(b)
		open, closing := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if open < 0 || closing < open {
			continue
		}
		fields := strings.Fields(st[closing+1:])
		if len(fields) < 2 {
			continue
		}
		pp, _ := strconv.Atoi(fields[1])
		parent[p] = pp
		comm[p] = st[open+1 : closing]
	}
	var out []int
	for p := range parent {
		if comm[p] != "sshd" {
			continue
		}
		if pid == 0 {
			out = append(out, p)
			continue
		}
		for a := parent[p]; a > 1; a = parent[a] {
			if a == pid {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// socketInodes returns the inodes of TCP sockets whose local end is
// addr:port and that are not listening.
func socketInodes(addr string, port int) (map[string]bool, error) {
	ip := net.ParseIP(addr).To4()
	if ip == nil {
		return nil, fmt.Errorf("not an IPv4 address: %s", addr)
	}
	// /proc/net/tcp prints the address as a host-order (little-endian)
	// 32-bit number.
	want := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], port)
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[1] != want || fields[3] == "0A" {
			continue
		}
		out[fields[9]] = true
	}
	return out, sc.Err()
}

func holdsSocket(pid int, inodes map[string]bool) bool {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if strings.HasPrefix(target, "socket:[") && inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] {
			return true
		}
	}
	return false
}
