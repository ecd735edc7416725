package local

import (
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// SuperviseArg is the hidden first argument that makes the drover binary
// a command supervisor (see Supervise).
const SuperviseArg = "__supervise"

// Supervise runs argv (the shell and its arguments) in the supervisor's
// own process group and returns its exit status. The executor starts the
// supervisor with a parent-death signal, so when the drover process dies
// (even by kill -9) the supervisor is told, kills the command's whole
// process group and exits: no step keeps running orphaned while a resumed
// job runs it again.
func Supervise(argv []string) int {
	if len(argv) == 0 {
		return 2
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		os.Stderr.WriteString("drover: starting " + argv[0] + ": " + err.Error() + "\n")
		return 127
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return exitStatus(cmd, err)
	case <-term:
	}
	pgid := syscall.Getpgrp()
	signal.Ignore(syscall.SIGTERM)
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case err := <-done:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return exitStatus(cmd, err)
	case <-time.After(2 * time.Second):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	return 137
}

func exitStatus(cmd *exec.Cmd, err error) int {
	if err == nil {
		return 0
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
		if ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ws.ExitStatus()
	}
	return 1
}
