// Package pgtest starts PostgreSQL servers of a test's own, from the
// binaries of an installed PostgreSQL, so that a test may stop, restart or
// reconfigure its server without disturbing anything else on the machine.
package pgtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
)

// Server is a PostgreSQL server of the test's own.
type Server struct {
	t    testing.TB
	bin  string // directory of initdb, pg_ctl
	dir  string // data directory's parent, also the socket directory
	Port int
	user *user.User // the user the server runs as when the test runs as root
}

// Options configure New.
type Options struct {
	// Password, when set, is the postgres user's password, which TCP
	// connections must give (scram-sha-256); otherwise they are trusted.
	Password string
}

// New initialises and starts a PostgreSQL server on a free loopback port,
// stopped and removed when the test ends. It skips the test when no
// PostgreSQL binaries are installed, unless DROVER_REQUIRE_POSTGRES=1.
func New(t testing.TB, o Options) *Server {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		msg := "no PostgreSQL binaries in /usr/lib/postgresql/*/bin (install the postgresql package to run this test)"
		if os.Getenv("DROVER_REQUIRE_POSTGRES") == "1" {
			t.Fatalf("%s (DROVER_REQUIRE_POSTGRES=1)", msg)
		}
		t.Skip(msg)
	}
	// The newest version: the directories sort as numbers.
	sort.Slice(bins, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(bins[i]))))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(bins[j]))))
		return vi < vj
	})
	p := &Server{t: t, bin: filepath.Dir(bins[len(bins)-1]), Port: FreePort(t)}
	// PostgreSQL refuses to run as root: as root, run it as postgres in a
	// directory that user owns (t.TempDir's parents are root's, mode 0700).
	dir, err := os.MkdirTemp("", "drover-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p.dir = dir
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("running as root and no postgres user to run PostgreSQL as: %v", err)
		}
		p.user = u
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"-D", p.Data(), "-U", "postgres", "-E", "UTF8", "--no-sync", "--auth-local=trust", "--auth-host=trust"}
	if o.Password != "" {
		pwfile := filepath.Join(dir, "pwfile")
		if err := os.WriteFile(pwfile, []byte(o.Password+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args[:len(args)-1], "--auth-host=scram-sha-256", "--pwfile="+pwfile)
	}
	if out, err := p.Run("initdb", args...); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.Start()
	t.Cleanup(func() { p.Run("pg_ctl", "-D", p.Data(), "-m", "immediate", "-w", "stop") })
	return p
}

// Data is the data directory.
func (p *Server) Data() string { return filepath.Join(p.dir, "data") }

// URL is the server's maintenance database, without a password.
func (p *Server) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
}

// Run runs one of PostgreSQL's programs, as the server's user.
func (p *Server) Run(prog string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(p.bin, prog), args...)
	if p.user != nil {
		uid, _ := strconv.Atoi(p.user.Uid)
		gid, _ := strconv.Atoi(p.user.Gid)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		cmd.Env = append(os.Environ(), "HOME="+p.dir)
	}
	cmd.Dir = p.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Start starts the server (again).
func (p *Server) Start() {
	p.t.Helper()
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=100", p.Port, p.dir)
	if out, err := p.Run("pg_ctl", "-D", p.Data(), "-o", opts, "-l", filepath.Join(p.dir, "log"), "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(p.dir, "log"))
		p.t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
}

// Stop stops the server as a crash would: immediate mode ends every
// backend without a checkpoint, and the next start recovers from the WAL.
func (p *Server) Stop() {
	p.t.Helper()
	if out, err := p.Run("pg_ctl", "-D", p.Data(), "-m", "immediate", "-w", "stop"); err != nil {
		p.t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
}

// FreePort returns a loopback TCP port nobody listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
