// Package script turns workflow files into runnable Starlark: it gathers a
// workflow's files, compiles them once per source digest, binds main's
// parameters and converts values to and from JSON for the journal.
package script

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"go.starlark.net/syntax"

	"github.com/drover/drover/internal/job"
)

// MaxFileSize bounds one workflow file; a larger one is almost certainly
// not a workflow.
const MaxFileSize = 4 << 20

// ReadSource reads a workflow's entry file and every file it loads,
// transitively, from the entry's directory. File names in the source are
// relative to that directory, so positions read hello.star:3:5 wherever
// the job later runs.
func ReadSource(entryPath string) (*job.Source, error) {
	dir := filepath.Dir(entryPath)
	entry := filepath.Base(entryPath)
	src := &job.Source{Entry: entry, Files: map[string]string{}}
	if err := readInto(src, dir, entry, ""); err != nil {
		return nil, err
	}
	src.Seal()
	return src, nil
}

func readInto(src *job.Source, dir, name, from string) error {
	if _, ok := src.Files[name]; ok {
		return nil
	}
	full := filepath.Join(dir, filepath.FromSlash(name))
	fi, err := os.Stat(full)
	if err != nil {
		if from != "" {
			return fmt.Errorf("%s: load(%q): %w", from, name, err)
		}
		return fmt.Errorf("reading workflow: %w", err)
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory, not a workflow file", full)
	}
	if fi.Size() > MaxFileSize {
		return fmt.Errorf("%s is %d bytes; workflow files are at most %d", full, fi.Size(), MaxFileSize)
	}
	data, err := os.ReadFile(full)
	if err != nil {
		return fmt.Errorf("reading workflow: %w", err)
	}
	src.Files[name] = string(data)
	f, err := fileOptions.Parse(name, data, 0)
	if err != nil {
		return compileError(err)
	}
	for _, stmt := range f.Stmts {
		load, ok := stmt.(*syntax.LoadStmt)
		if !ok {
			continue
		}
		mod, _ := load.Module.Value.(string)
		resolved, err := resolveLoad(name, mod)
		if err != nil {
			return &Error{Msg: err.Error(), Pos: load.Module.TokenPos}
		}
		if err := readInto(src, dir, resolved, fmt.Sprintf("%s", load.Module.TokenPos)); err != nil {
			return err
		}
	}
	return nil
}

// resolveLoad maps a load() module string to a file name in the source:
// relative to the loading file, never outside the workflow's directory.
func resolveLoad(from, module string) (string, error) {
	if module == "" {
		return "", fmt.Errorf("load of an empty module name")
	}
	if strings.HasPrefix(module, "/") {
		return "", fmt.Errorf("load(%q): absolute paths are not allowed; load files beside the workflow", module)
	}
	p := path.Clean(path.Join(path.Dir(from), module))
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("load(%q) leaves the workflow's directory; load files beside the workflow", module)
	}
	return p, nil
}
