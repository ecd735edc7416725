package fleettest

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/cli"
	"github.com/drover/drover/internal/remote/sshtest"
)

// BenchmarkFanoutCLI runs `drover run` of sh("true") (and of ten sh
// steps) on 200 hosts at throttle 50 inside the test process, through
// the CLI's entry point, so that the controller's side of F1 and F2 can
// be profiled (drover has no profiling flag):
//
//	go test -run '^$' -bench FanoutCLI -benchtime 3x -cpuprofile cpu.out ./internal/fleettest
//	go tool pprof -top -nodecount 40 internal/fleettest.test cpu.out
//
// The hosts' side (sshd, the supervised wrapper's shells) is in other
// processes, outside the profile: bench/fleet reports it.
func BenchmarkFanoutCLI(b *testing.B) {
	const hosts = 200
	s := sshtest.Start(b, hosts)
	dir := b.TempDir()
	home := filepath.Join(dir, "home")
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		b.Fatal(err)
	}
	for src, dst := range map[string]string{s.ClientKey: "id_ed25519", s.KnownHosts: "known_hosts"} {
		data, err := os.ReadFile(src)
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(home, ".ssh", dst), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	b.Setenv("HOME", home)
	b.Setenv("SSH_AUTH_SOCK", "")
	b.Setenv("XDG_DATA_HOME", filepath.Join(dir, "xdg"))
	inv := s.WriteInventory("hosts.ini")

	for _, bc := range []struct {
		name  string
		steps int
	}{{"true", 1}, {"ten-steps", 10}} {
		b.Run(bc.name, func(b *testing.B) {
			wf := filepath.Join(dir, bc.name+".star")
			text := fmt.Sprintf("def main():\n    for i in range(%d):\n        sh(\"true\")\n", bc.steps)
			if err := os.WriteFile(wf, []byte(text), 0o644); err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				i++
				db := filepath.Join(dir, fmt.Sprintf("%s-%d.db", bc.name, i))
				var stderr strings.Builder
				code := cli.Main(context.Background(), []string{"--db", db, "run", wf, "--inventory", inv, "--throttle", "50"}, nil, io.Discard, &stderr)
				if code != 0 {
					b.Fatalf("drover run: exit %d\n%s", code, stderr.String())
				}
			}
			b.ReportMetric(float64(hosts), "hosts/op")
		})
	}
}
