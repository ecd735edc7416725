package remote_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/remote"
	"github.com/drover/drover/internal/remote/sshtest"
)

const benchHosts = 50

// BenchmarkFanout runs `true` on 50 loopback hosts of real sshds: bare
// (x/crypto/ssh, one connection per host and nothing persisted, as
// bench/fanout does), then through the manager with supervised commands,
// from cold (a new manager: every host handshakes) and warm (pooled
// connections: no handshake).
func BenchmarkFanout(b *testing.B) {
	s := sshtest.Start(b, benchHosts)

	b.Run("bare", func(b *testing.B) {
		signer := s.ClientSigner
		cb, err := knownhosts.New(s.KnownHosts)
		if err != nil {
			b.Fatal(err)
		}
		cfg := &ssh.ClientConfig{User: s.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: cb, Timeout: 10 * time.Second}
		var addrs []string
		for _, h := range s.Hosts {
			addrs = append(addrs, h.HostPort())
		}
		for b.Loop() {
			if n := bareFanout(addrs, cfg, "true", 32); n != 0 {
				b.Fatalf("%d hosts failed", n)
			}
		}
		b.ReportMetric(benchHosts, "handshakes/op")
	})

	run := func(b *testing.B, m *remote.Manager, job string) {
		var wg sync.WaitGroup
		errs := make(chan error, benchHosts)
		for _, h := range s.Hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := m.Exec(context.Background(), &engine.Command{JobID: job, StepKey: "1", Host: engineHost(s, h), Cmd: "true"})
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	opts := func(b *testing.B) remote.Options {
		o := testOptions(b, s)
		o.Logger = nil
		return o
	}

	b.Run("drover/cold", func(b *testing.B) {
		o := opts(b)
		var handshakes int64
		i := 0
		for b.Loop() {
			m, err := remote.New(o)
			if err != nil {
				b.Fatal(err)
			}
			run(b, m, fmt.Sprint("cold-", i))
			handshakes += m.Metrics().Handshakes
			m.Close()
			i++
		}
		b.ReportMetric(float64(handshakes)/float64(i), "handshakes/op")
	})

	b.Run("drover/warm", func(b *testing.B) {
		m, err := remote.New(opts(b))
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		run(b, m, "warmup")
		before := m.Metrics().Handshakes
		i := 0
		for b.Loop() {
			run(b, m, fmt.Sprint("warm-", i))
			i++
		}
		b.ReportMetric(float64(m.Metrics().Handshakes-before)/float64(i), "handshakes/op")
	})
	os.RemoveAll(s.UserDir + "/run")
}

// bareFanout mirrors bench/fanout's Run (a main package cannot be
// imported): dial, one session, close, parallel hosts in flight.
func bareFanout(addrs []string, cfg *ssh.ClientConfig, cmd string, parallel int) int {
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for _, a := range addrs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := func() error {
				c, err := ssh.Dial("tcp", a, cfg)
				if err != nil {
					return err
				}
				defer c.Close()
				sess, err := c.NewSession()
				if err != nil {
					return err
				}
				defer sess.Close()
				return sess.Run(cmd)
			}()
			if err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed
}

// BenchmarkExecLatency is one short command after another on one host
// over an open connection: a bare session against a supervised Exec.
func BenchmarkExecLatency(b *testing.B) {
	s := sshtest.Start(b, 1)
	h := s.Hosts[0]

	b.Run("bare", func(b *testing.B) {
		cb, err := knownhosts.New(s.KnownHosts)
		if err != nil {
			b.Fatal(err)
		}
		c, err := ssh.Dial("tcp", h.HostPort(), &ssh.ClientConfig{User: s.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(s.ClientSigner)}, HostKeyCallback: cb})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		for b.Loop() {
			sess, err := c.NewSession()
			if err != nil {
				b.Fatal(err)
			}
			if err := sess.Run("true"); err != nil {
				b.Fatal(err)
			}
			sess.Close()
		}
	})

	b.Run("drover", func(b *testing.B) {
		o := testOptions(b, s)
		o.Logger = nil
		m, err := remote.New(o)
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		i := 0
		for b.Loop() {
			if _, err := m.Exec(context.Background(), &engine.Command{JobID: "lat", StepKey: fmt.Sprint(i), Host: engineHost(s, h), Cmd: "true"}); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
