package sshtest

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func dial(t *testing.T, s *Server, h Host) (*ssh.Client, error) {
	t.Helper()
	cb, err := knownhosts.New(s.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	return ssh.Dial("tcp", h.HostPort(), &ssh.ClientConfig{
		User:            s.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(s.ClientSigner)},
		HostKeyCallback: cb,
		Timeout:         5 * time.Second,
	})
}

func run(t *testing.T, c *ssh.Client, cmd string) string {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestServer(t *testing.T) {
	t.Parallel()
	s := Start(t, 18) // two sshds
	if len(s.Hosts) != 18 || s.Hosts[17].Addr != "127.0.0.19" || s.Hosts[0].Port == s.Hosts[16].Port {
		t.Fatalf("hosts: %+v", s.Hosts)
	}
	for _, h := range []Host{s.Hosts[0], s.Hosts[17]} {
		c, err := dial(t, s, h)
		if err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if got := run(t, c, "id -un; echo $SHELL"); got != s.User+"\n/bin/sh" && s.User == TestUser {
			t.Errorf("login = %q", got)
		}
		c.Close()
	}

	c, err := dial(t, s, s.Hosts[1])
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	if n := s.DropConnections(s.Hosts[1]); n == 0 {
		t.Fatal("DropConnections killed nothing")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		out, _ := exec.Command("ss", "-tnpa", "sport = :"+strconv.Itoa(s.Hosts[1].Port)).CombinedOutput()
		ps, _ := exec.Command("ps", "-eo", "pid,ppid,comm,args").CombinedOutput()
		t.Fatalf("connection survived DropConnections\n%s\n%s", out, ps)
	}

	s.ChangeHostKey(s.Hosts[2])
	if _, err := dial(t, s, s.Hosts[2]); err == nil || !strings.Contains(err.Error(), "key mismatch") {
		t.Errorf("changed key: %v", err)
	}
	s.ForgetHostKey(s.Hosts[3])
	if _, err := dial(t, s, s.Hosts[3]); err == nil || !strings.Contains(err.Error(), "key is unknown") {
		t.Errorf("forgotten key: %v", err)
	}
	if _, err := dial(t, s, s.RefusingHost()); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("refusing host: %v", err)
	}
	slow := s.SlowHost(s.Hosts[4], 20*time.Millisecond)
	start := time.Now()
	c, err = dial(t, s, slow)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if d := time.Since(start); d < 60*time.Millisecond {
		t.Errorf("slow host handshake took only %v", d)
	}
	s.Stop(s.Hosts[5])
	if _, err := dial(t, s, s.Hosts[5]); err == nil {
		t.Error("stopped host still answers")
	}
}
