// Command fanout is the honest reference for drover's fan-out benchmarks:
// a bare fan-out written directly with golang.org/x/crypto/ssh that runs
// one command on N hosts, M in flight, with host key checking on, and
// persists nothing. It prints the wall time. Whatever drover adds on top
// (pooling, supervision, journaling) is measured against this.
//
//	go run ./bench/fanout -hosts 10.0.0.1,10.0.0.2:2222 -user deploy \
//	    -key ~/.ssh/id_ed25519 -known-hosts ~/.ssh/known_hosts -parallel 32
//
// -hosts also takes @FILE, one host[:port] per line.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func main() {
	home, _ := os.UserHomeDir()
	hostsFlag := flag.String("hosts", "", "comma-separated host[:port] list, or @FILE with one per line")
	user := flag.String("user", os.Getenv("USER"), "login user")
	keyPath := flag.String("key", filepath.Join(home, ".ssh", "id_ed25519"), "unencrypted private key")
	known := flag.String("known-hosts", filepath.Join(home, ".ssh", "known_hosts"), "known_hosts file")
	parallel := flag.Int("parallel", 32, "hosts in flight at once")
	cmd := flag.String("cmd", "true", "command to run on each host")
	timeout := flag.Duration("timeout", 15*time.Second, "connect timeout per host")
	flag.Parse()

	hosts, err := parseHosts(*hostsFlag)
	if err != nil || len(hosts) == 0 {
		fmt.Fprintln(os.Stderr, "fanout: -hosts: need at least one host", err)
		os.Exit(2)
	}
	b, err := os.ReadFile(*keyPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fanout:", err)
		os.Exit(2)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fanout: key:", err)
		os.Exit(2)
	}
	cb, err := knownhosts.New(*known)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fanout: known_hosts:", err)
		os.Exit(2)
	}
	cfg := &ssh.ClientConfig{
		User:            *user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: cb,
		Timeout:         *timeout,
	}

	start := time.Now()
	failed := Run(hosts, cfg, *cmd, *parallel, func(host string, err error) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", host, err)
	})
	wall := time.Since(start)
	fmt.Printf("hosts=%d parallel=%d failed=%d wall=%s\n", len(hosts), *parallel, failed, wall.Round(time.Millisecond))
	if failed > 0 {
		os.Exit(1)
	}
}

// Run connects to every host, runs cmd in one session, and disconnects,
// with at most parallel hosts in flight. It returns how many failed.
func Run(hosts []string, cfg *ssh.ClientConfig, cmd string, parallel int, report func(string, error)) int {
	sem := make(chan struct{}, max(1, parallel))
	var wg sync.WaitGroup
	var failed atomic.Int64
	for _, h := range hosts {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := runOne(h, cfg, cmd); err != nil {
				failed.Add(1)
				report(h, err)
			}
		}()
	}
	wg.Wait()
	return int(failed.Load())
}

func runOne(addr string, cfg *ssh.ClientConfig, cmd string) error {
	c, err := ssh.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Run(cmd)
}

func parseHosts(v string) ([]string, error) {
	var list []string
	if strings.HasPrefix(v, "@") {
		f, err := os.Open(v[1:])
		if err != nil {
			return nil, err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" && !strings.HasPrefix(l, "#") {
				list = append(list, l)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, err
		}
	} else {
		for _, h := range strings.Split(v, ",") {
			if h = strings.TrimSpace(h); h != "" {
				list = append(list, h)
			}
		}
	}
	for i, h := range list {
		if _, _, err := net.SplitHostPort(h); err != nil {
			list[i] = net.JoinHostPort(h, "22")
		}
	}
	return list, nil
}
