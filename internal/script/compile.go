package script

import (
	"fmt"
	"sync"

	"go.starlark.net/resolve"
	"go.starlark.net/starlark"
	"go.starlark.net/syntax"

	"github.com/drover/drover/internal/job"
)

// fileOptions is the dialect: Starlark with while loops, recursion and
// top-level control flow, which operations scripts written by Python users
// expect. Runaway loops are bounded by the thread's step limit instead.
var fileOptions = &syntax.FileOptions{
	Set:             true,
	While:           true,
	TopLevelControl: true,
	GlobalReassign:  true,
	Recursion:       true,
}

// Predeclared are the names a workflow may use besides Starlark's own.
// The set is fixed at compile time; the values are bound per job.
var Predeclared = []string{
	"sh", "copy", "http", "sleep", "wait", "now", "uuid",
	"parallel", "foreach_parallel", "checkpoint", "suspend",
	"emit", "progress", "target", "vars", "step_id",
	"struct", "json",
}

func isPredeclared(name string) bool {
	for _, n := range Predeclared {
		if n == name {
			return true
		}
	}
	return false
}

// Program is a compiled workflow: every file of its source.
type Program struct {
	Source  *job.Source
	modules map[string]*starlark.Program
}

// Cache compiles each source once, keyed by digest, so that many jobs of
// one workflow share the compiled program.
type Cache struct {
	mu       sync.Mutex
	programs map[string]*cacheEntry
	// Compiles counts real compilations, for tests and metrics.
	compiles int
}

type cacheEntry struct {
	once sync.Once
	prog *Program
	err  error
}

// NewCache returns an empty program cache.
func NewCache() *Cache { return &Cache{programs: map[string]*cacheEntry{}} }

// Compiles reports how many sources the cache has compiled.
func (c *Cache) Compiles() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.compiles
}

// Program returns the compiled program for src.
func (c *Cache) Program(src *job.Source) (*Program, error) {
	if src.Digest == "" {
		src.Seal()
	}
	c.mu.Lock()
	e, ok := c.programs[src.Digest]
	if !ok {
		e = &cacheEntry{}
		c.programs[src.Digest] = e
	}
	c.mu.Unlock()
	e.once.Do(func() {
		c.mu.Lock()
		c.compiles++
		c.mu.Unlock()
		e.prog, e.err = Compile(src)
	})
	return e.prog, e.err
}

// Compile parses and resolves every file of src.
func Compile(src *job.Source) (*Program, error) {
	p := &Program{Source: src, modules: map[string]*starlark.Program{}}
	if _, ok := src.Files[src.Entry]; !ok {
		return nil, fmt.Errorf("workflow source has no entry file %q", src.Entry)
	}
	for name, text := range src.Files {
		_, prog, err := starlark.SourceProgramOptions(fileOptions, name, text, isPredeclared)
		if err != nil {
			return nil, compileError(err)
		}
		p.modules[name] = prog
	}
	return p, nil
}

func compileError(err error) error {
	switch e := err.(type) {
	case syntax.Error:
		return &Error{Msg: "syntax error: " + e.Msg, Pos: e.Pos, Cause: err}
	case resolve.ErrorList:
		if len(e) > 0 {
			return &Error{Msg: e[0].Msg, Pos: e[0].Pos, Cause: err}
		}
	}
	return &Error{Msg: err.Error(), Cause: err}
}

// Init executes the entry module and the modules it loads on thread, with
// the given predeclared values, and returns the entry's globals. Loaded
// modules are executed once per Init.
func (p *Program) Init(thread *starlark.Thread, predeclared starlark.StringDict) (starlark.StringDict, error) {
	type result struct {
		globals starlark.StringDict
		err     error
	}
	loaded := map[string]*result{}
	var exec func(name string) (starlark.StringDict, error)
	thread.Load = func(t *starlark.Thread, module string) (starlark.StringDict, error) {
		from := t.CallFrame(0).Pos.Filename()
		name, err := resolveLoad(from, module)
		if err != nil {
			return nil, err
		}
		if r, ok := loaded[name]; ok {
			if r == nil {
				return nil, fmt.Errorf("cycle in load graph at %q", name)
			}
			return r.globals, r.err
		}
		loaded[name] = nil
		g, err := exec(name)
		loaded[name] = &result{g, err}
		return g, err
	}
	exec = func(name string) (starlark.StringDict, error) {
		prog, ok := p.modules[name]
		if !ok {
			return nil, fmt.Errorf("load(%q): no such file in the workflow's stored source", name)
		}
		return prog.Init(thread, predeclared)
	}
	return exec(p.Source.Entry)
}

// Main returns the workflow's entry point.
func Main(globals starlark.StringDict, entry string) (*starlark.Function, error) {
	v, ok := globals["main"]
	if !ok {
		return nil, &Error{Msg: fmt.Sprintf("%s defines no main(): a workflow's entry point is def main(...)", entry),
			Pos: syntax.MakePosition(&entry, 1, 1)}
	}
	fn, ok := v.(*starlark.Function)
	if !ok {
		return nil, &Error{Msg: fmt.Sprintf("main is a %s, not a function: a workflow's entry point is def main(...)", v.Type()),
			Pos: syntax.MakePosition(&entry, 1, 1)}
	}
	return fn, nil
}
