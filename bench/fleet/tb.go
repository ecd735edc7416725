package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// benchTB is the little of testing.TB that sshtest uses, so that the
// harness can start the same sshd hosts as the tests. The embedded nil
// interface only provides testing.TB's unexported method; every method
// sshtest calls is defined here.
type benchTB struct {
	testing.TB

	root string

	mu       sync.Mutex
	cleanups []func()
	dirs     int
	failed   bool
}

func newBenchTB() (*benchTB, error) {
	// TempDir's parent gets chmod 0711 by sshtest: it must be ours, not
	// /tmp.
	root, err := os.MkdirTemp("", "drover-fleetbench-")
	if err != nil {
		return nil, err
	}
	b := &benchTB{root: root}
	b.Cleanup(func() { os.RemoveAll(root) })
	return b, nil
}

func (b *benchTB) Helper()      {}
func (b *benchTB) Name() string { return "fleetbench" }

func (b *benchTB) Cleanup(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cleanups = append(b.cleanups, f)
}

// cleanup runs the registered functions, last first, once.
func (b *benchTB) cleanup() {
	b.mu.Lock()
	fs := b.cleanups
	b.cleanups = nil
	b.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

func (b *benchTB) TempDir() string {
	b.mu.Lock()
	b.dirs++
	n := b.dirs
	b.mu.Unlock()
	d := filepath.Join(b.root, fmt.Sprintf("%03d", n))
	if err := os.Mkdir(d, 0o700); err != nil {
		b.Fatal(err)
	}
	return d
}

func (b *benchTB) Failed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failed
}

func (b *benchTB) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (b *benchTB) Log(args ...any)                 { fmt.Fprintln(os.Stderr, args...) }

func (b *benchTB) Errorf(format string, args ...any) {
	b.mu.Lock()
	b.failed = true
	b.mu.Unlock()
	fmt.Fprintf(os.Stderr, "fleet: "+format+"\n", args...)
}

func (b *benchTB) Error(args ...any) { b.Errorf("%s", fmt.Sprint(args...)) }

func (b *benchTB) Fatalf(format string, args ...any) {
	b.Errorf(format, args...)
	b.cleanup()
	os.Exit(1)
}

func (b *benchTB) Fatal(args ...any)                { b.Fatalf("%s", fmt.Sprint(args...)) }
func (b *benchTB) Skipf(format string, args ...any) { b.Fatalf("cannot run: "+format, args...) }
func (b *benchTB) Skip(args ...any)                 { b.Fatalf("cannot run: %s", fmt.Sprint(args...)) }
