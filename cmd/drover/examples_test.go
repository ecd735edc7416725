package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExamplesAreRun keeps examples/ from rotting: every workflow there
// (a file with a main) must be run by a script in testdata/script, which
// find it in $WORK/examples.
func TestExamplesAreRun(t *testing.T) {
	t.Parallel()
	examples, err := filepath.Glob(filepath.Join("..", "..", "examples", "*.star"))
	if err != nil {
		t.Fatal(err)
	}
	scripts, err := filepath.Glob(filepath.Join("testdata", "script", "*.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for _, s := range scripts {
		data, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		all.Write(data)
	}
	runs := all.String()
	if len(examples) == 0 {
		t.Fatal("no examples found")
	}
	for _, ex := range examples {
		data, err := os.ReadFile(ex)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "def main(") {
			continue // a library that workflows load
		}
		if !runsFile(runs, "examples/"+filepath.Base(ex)) {
			t.Errorf("no script in testdata/script runs examples/%s (with drover run)", filepath.Base(ex))
		}
	}
	// Scripts with drover step blocks (SPEC 6), run with bash or sh.
	scriptsEx, err := filepath.Glob(filepath.Join("..", "..", "examples", "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	for _, ex := range scriptsEx {
		if !runsScript(runs, "examples/"+filepath.Base(ex)) {
			t.Errorf("no script in testdata/script runs examples/%s (with bash or sh)", filepath.Base(ex))
		}
	}
	// The README's first command.
	if !strings.Contains(runs, "drover run examples/hello.star -p name=world") {
		t.Error("no script runs the README's first command: drover run examples/hello.star -p name=world")
	}
}

// runsFile reports whether a line of scripts runs file with drover run.
func runsFile(scripts, file string) bool {
	for _, line := range strings.Split(scripts, "\n") {
		if strings.Contains(line, "drover run ") && strings.Contains(line, " "+file) {
			return true
		}
	}
	return false
}

// runsScript reports whether a line of scripts runs the shell script
// file.
func runsScript(scripts, file string) bool {
	for _, line := range strings.Split(scripts, "\n") {
		if strings.Contains(line, "bash "+file) || strings.Contains(line, "sh "+file) {
			return true
		}
	}
	return false
}
