package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain turns the test binary into the real drover when it is run as
// "drover" from a script, as testscript does for the commands given here.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"drover": main,
	})
}

// TestScripts runs the end-to-end CLI scripts in testdata/script. Each
// script has its own store ($WORK/drover.db), home and data directory, a
// copy of examples/ in $WORK/examples and a 3s lease, so that a drover
// process that dies loses its jobs quickly.
//
// Scripts can use, besides testscript's own commands, the ones in
// scriptCmds (see cmds_test.go): exits, jobid, waitstate, waitfile, json,
// jsonvar, bg, bgwait, bgkill, serve, sqlite and sleep.
func TestScripts(t *testing.T) {
	t.Parallel()
	testscript.Run(t, testscript.Params{
		Dir:                 filepath.Join("testdata", "script"),
		Setup:               setupScript,
		Cmds:                scriptCmds,
		RequireExplicitExec: true,
		Deadline:            deadline(t),
	})
}

// deadline leaves a little time before the test binary's own timeout so
// that a hung script fails with its log rather than a panic dump.
func deadline(t *testing.T) time.Time {
	d, ok := t.Deadline()
	if !ok {
		return time.Time{}
	}
	return d.Add(-5 * time.Second)
}

func setupScript(env *testscript.Env) error {
	work := env.WorkDir
	env.Setenv("HOME", work)
	env.Setenv("XDG_DATA_HOME", filepath.Join(work, ".local", "share"))
	env.Setenv("DROVER_DB", filepath.Join(work, "drover.db"))
	env.Setenv("DROVER_LEASE", "3s")
	env.Setenv("USER", "tester")
	env.Values[bgKey] = &bgProcs{procs: map[string]*bgProc{}}
	env.Defer(func() { killAll(env.Values[bgKey].(*bgProcs)) })
	return copyDir(filepath.Join(work, "examples"), "../../examples")
}

// copyDir copies the regular files under src to dst.
func copyDir(dst, src string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o777)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o666)
	})
}
