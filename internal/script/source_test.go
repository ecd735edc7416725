package script

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.starlark.net/starlark"

	"github.com/drover/drover/internal/job"
)

// writeFiles writes name -> content under dir, creating directories.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestReadSourceLoadsSiblings(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wf")
	writeFiles(t, dir, map[string]string{
		"main.star":       "load(\"lib.star\", \"double\")\nload(\"sub/util.star\", \"triple\")\ndef main(x=1):\n    return double(x) + triple(x)\n",
		"lib.star":        "def double(x):\n    return 2 * x\n",
		"sub/util.star":   "load(\"../lib.star\", \"double\")\nload(\"more.star\", \"one\")\ndef triple(x):\n    return double(x) + x * one\n",
		"sub/more.star":   "one = 1\n",
		"unrelated.star":  "this is not even starlark\n",
		"sub/other.star":  "x = 1\n",
		"../outside.star": "secret = 1\n",
	})
	src, err := ReadSource(filepath.Join(dir, "main.star"))
	if err != nil {
		t.Fatal(err)
	}
	if src.Entry != "main.star" {
		t.Errorf("entry = %q", src.Entry)
	}
	var names []string
	for n := range src.Files {
		names = append(names, n)
	}
	want := map[string]bool{"main.star": true, "lib.star": true, "sub/util.star": true, "sub/more.star": true}
	if len(src.Files) != len(want) {
		t.Errorf("files = %v, want exactly the entry and what it loads, transitively: %v", names, want)
	}
	for n := range want {
		if _, ok := src.Files[n]; !ok {
			t.Errorf("file %s missing from the source (have %v)", n, names)
		}
	}
	if src.Digest == "" {
		t.Fatal("source not sealed")
	}

	// The stored source runs on its own: loads resolve inside it.
	prog, err := Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	globals, err := prog.Init(&starlark.Thread{Name: "t"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fn, err := Main(globals, src.Entry)
	if err != nil {
		t.Fatal(err)
	}
	v, err := starlark.Call(&starlark.Thread{Name: "t"}, fn, starlark.Tuple{starlark.MakeInt(5)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.String() != "25" {
		t.Errorf("main(5) = %s, want 25", v)
	}

	// Reading again gives the same digest; changing a loaded file changes it.
	again, err := ReadSource(filepath.Join(dir, "main.star"))
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != src.Digest {
		t.Errorf("digest changed between two reads of the same files")
	}
	writeFiles(t, dir, map[string]string{"sub/more.star": "one = 2\n"})
	changed, err := ReadSource(filepath.Join(dir, "main.star"))
	if err != nil {
		t.Fatal(err)
	}
	if changed.Digest == src.Digest {
		t.Errorf("digest did not change when a loaded file changed")
	}
	// A file not loaded does not count.
	writeFiles(t, dir, map[string]string{"unrelated.star": "changed"})
	same, _ := ReadSource(filepath.Join(dir, "main.star"))
	if same.Digest != changed.Digest {
		t.Errorf("digest changed with a file the workflow does not load")
	}
}

func TestReadSourceRefusesEscapingLoads(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"secret.star":        "secret = 1\n",
		"wf/lib/deep.star":   "load(\"../../secret.star\", \"secret\")\n",
		"wf/ok.star":         "load(\"lib/fine.star\", \"x\")\ndef main():\n    pass\n",
		"wf/lib/fine.star":   "x = 1\n",
		"wf/up.star":         "load(\"../secret.star\", \"secret\")\ndef main():\n    pass\n",
		"wf/sneaky.star":     "load(\"lib/../../secret.star\", \"secret\")\ndef main():\n    pass\n",
		"wf/deep.star":       "load(\"lib/deep.star\", \"secret\")\ndef main():\n    pass\n",
		"wf/abs.star":        "load(\"" + filepath.ToSlash(filepath.Join(root, "secret.star")) + "\", \"secret\")\ndef main():\n    pass\n",
		"wf/missing.star":    "def main():\n    pass\nload(\"nope.star\", \"x\")\n",
		"wf/empty.star":      "load(\"\", \"x\")\ndef main():\n    pass\n",
		"wf/badsyntax.star":  "def main(:\n    pass\n",
		"wf/loadsbad.star":   "load(\"badsyntax.star\", \"main\")\n",
		"wf/cycle_a.star":    "load(\"cycle_b.star\", \"b\")\na = 1\ndef main():\n    pass\n",
		"wf/cycle_b.star":    "load(\"cycle_a.star\", \"a\")\nb = 1\n",
		"wf/dotdot_ok.star":  "load(\"lib/../lib/fine.star\", \"x\")\ndef main():\n    pass\n",
		"wf/lib/nested.star": "x = 2\n",
	})
	wf := filepath.Join(root, "wf")
	if _, err := ReadSource(filepath.Join(wf, "ok.star")); err != nil {
		t.Errorf("ok.star: %v", err)
	}
	if src, err := ReadSource(filepath.Join(wf, "dotdot_ok.star")); err != nil {
		t.Errorf("dotdot_ok.star: %v", err)
	} else if _, ok := src.Files["lib/fine.star"]; !ok || len(src.Files) != 2 {
		t.Errorf("dotdot_ok.star: files %v, want the load cleaned to lib/fine.star", src.Files)
	}
	for _, tc := range []struct{ file, want string }{
		{"up.star", "leaves the workflow's directory"},
		{"sneaky.star", "leaves the workflow's directory"},
		{"deep.star", "leaves the workflow's directory"},
		{"abs.star", "absolute paths are not allowed"},
		{"missing.star", `missing.star:3:6: load("nope.star")`},
		{"empty.star", "empty module name"},
		{"badsyntax.star", "badsyntax.star:1:11"},
		{"loadsbad.star", "badsyntax.star:1:11"},
	} {
		src, err := ReadSource(filepath.Join(wf, tc.file))
		if err == nil {
			t.Errorf("%s: read files %v, want an error", tc.file, keys(src.Files))
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not say %q", tc.file, err, tc.want)
		}
		if strings.Contains(err.Error(), "secret = 1") {
			t.Errorf("%s: the error shows the outside file's content", tc.file)
		}
	}
	// Position of an escaping load: the load statement in the file.
	_, err := ReadSource(filepath.Join(wf, "up.star"))
	var se *Error
	if !errors.As(err, &se) || se.Pos.Filename() != "up.star" || se.Pos.Line != 1 {
		t.Errorf("escaping load error %v does not carry up.star:1 as its position", err)
	}

	// A cycle is read fine (each file once) and refused when it runs.
	src, err := ReadSource(filepath.Join(wf, "cycle_a.star"))
	if err != nil {
		t.Fatalf("cycle_a.star: %v", err)
	}
	if len(src.Files) != 2 {
		t.Errorf("cycle: files %v", keys(src.Files))
	}
	prog, err := Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prog.Init(&starlark.Thread{Name: "t"}, nil); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("running a load cycle: %v, want a cycle error", err)
	}
}

// A stored source is self-contained: a load of a file that is not in it
// fails when the program initialises, and does not read the disk.
func TestInitLoadOutsideStoredSource(t *testing.T) {
	src := &job.Source{Entry: "main.star", Files: map[string]string{
		"main.star": "load(\"gone.star\", \"x\")\ndef main():\n    pass\n",
	}}
	src.Seal()
	prog, err := Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	_, err = prog.Init(&starlark.Thread{Name: "t"}, nil)
	if err == nil || !strings.Contains(err.Error(), "no such file in the workflow's stored source") {
		t.Errorf("Init = %v", err)
	}
	src2 := &job.Source{Entry: "main.star", Files: map[string]string{
		"main.star": "load(\"../x.star\", \"x\")\ndef main():\n    pass\n",
	}}
	src2.Seal()
	prog2, err := Compile(src2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prog2.Init(&starlark.Thread{Name: "t"}, nil); err == nil || !strings.Contains(err.Error(), "leaves the workflow's directory") {
		t.Errorf("Init with an escaping load = %v", err)
	}
}

func TestReadSourceErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadSource(filepath.Join(dir, "absent.star")); err == nil {
		t.Error("reading a missing file succeeded")
	}
	if _, err := ReadSource(dir); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("reading a directory: %v", err)
	}
	big := filepath.Join(dir, "big.star")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(MaxFileSize + 1); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := ReadSource(big); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("reading a huge file: %v", err)
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func sealed(files map[string]string) *job.Source {
	src := &job.Source{Entry: "main.star", Files: files}
	src.Seal()
	return src
}

func TestCacheCompilesOncePerDigest(t *testing.T) {
	c := NewCache()
	a := sealed(map[string]string{"main.star": "def main():\n    return 1\n"})
	a2 := sealed(map[string]string{"main.star": "def main():\n    return 1\n"})
	b := sealed(map[string]string{"main.star": "def main():\n    return 2\n"})
	if a.Digest != a2.Digest || a.Digest == b.Digest {
		t.Fatalf("digests: a %s a2 %s b %s", a.Digest, a2.Digest, b.Digest)
	}
	p1, err := c.Program(a)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := c.Program(a2)
	if err != nil {
		t.Fatal(err)
	}
	if p1 != p2 {
		t.Errorf("same digest gave two programs")
	}
	if n := c.Compiles(); n != 1 {
		t.Errorf("Compiles() = %d after two requests for one digest, want 1", n)
	}
	if _, err := c.Program(b); err != nil {
		t.Fatal(err)
	}
	if n := c.Compiles(); n != 2 {
		t.Errorf("Compiles() = %d after a second digest, want 2", n)
	}

	// Many jobs of one workflow asking at once: still one compilation.
	many := sealed(map[string]string{"main.star": "def main():\n    return 3\n", "lib.star": "x = 1\n"})
	var wg sync.WaitGroup
	progs := make([]*Program, 32)
	for i := range progs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p, err := c.Program(many)
			if err != nil {
				t.Error(err)
			}
			progs[i] = p
		}(i)
	}
	wg.Wait()
	for _, p := range progs {
		if p != progs[0] {
			t.Fatalf("concurrent requests got different programs")
		}
	}
	if n := c.Compiles(); n != 3 {
		t.Errorf("Compiles() = %d after 32 concurrent requests for a third digest, want 3", n)
	}

	// An unsealed source is sealed by the cache and shares the entry.
	un := &job.Source{Entry: "main.star", Files: map[string]string{"main.star": "def main():\n    return 1\n"}}
	if p, err := c.Program(un); err != nil || p != p1 {
		t.Errorf("unsealed copy of a: %v, same program %v", err, p == p1)
	}
	if n := c.Compiles(); n != 3 {
		t.Errorf("Compiles() = %d, want 3", n)
	}
}

func TestCacheKeepsCompileErrors(t *testing.T) {
	c := NewCache()
	bad := sealed(map[string]string{"main.star": "def main():\n    return undefined_name\n"})
	for i := 0; i < 3; i++ {
		_, err := c.Program(bad)
		if err == nil {
			t.Fatal("compiling a workflow with an undefined name succeeded")
		}
		var se *Error
		if !errors.As(err, &se) || se.Pos.Filename() != "main.star" || se.Pos.Line != 2 {
			t.Errorf("compile error %v has no main.star:2 position", err)
		}
		if !strings.Contains(err.Error(), "undefined_name") {
			t.Errorf("compile error %q does not name the undefined name", err)
		}
	}
	if n := c.Compiles(); n != 1 {
		t.Errorf("a failed compilation was retried: Compiles() = %d", n)
	}
	noEntry := &job.Source{Entry: "main.star", Files: map[string]string{"lib.star": "x = 1\n"}}
	if _, err := c.Program(noEntry); err == nil || !strings.Contains(err.Error(), "no entry file") {
		t.Errorf("source without its entry: %v", err)
	}
}

func TestCompileDialect(t *testing.T) {
	// while loops, recursion, sets and top-level control flow are allowed.
	src := sealed(map[string]string{"main.star": `
n = 0
for i in range(3):
    n += i
def fact(k):
    return 1 if k <= 1 else k * fact(k - 1)
def main():
    s = set([1, 2])
    i = 0
    while i < 3:
        i += 1
    return fact(5) + i + n + len(s)
`})
	prog, err := Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	g, err := prog.Init(&starlark.Thread{Name: "t"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fn, err := Main(g, "main.star")
	if err != nil {
		t.Fatal(err)
	}
	v, err := starlark.Call(&starlark.Thread{Name: "t"}, fn, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.String() != "128" {
		t.Errorf("main() = %s, want 128", v)
	}
}

func TestMainMissingOrNotAFunction(t *testing.T) {
	for text, want := range map[string]string{
		"x = 1\n":    "defines no main()",
		"main = 1\n": "main is a int, not a function",
	} {
		prog, err := Compile(sealed(map[string]string{"main.star": text}))
		if err != nil {
			t.Fatal(err)
		}
		g, err := prog.Init(&starlark.Thread{Name: "t"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Main(g, "main.star")
		if err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "main.star:1:1: ") {
			t.Errorf("%q: Main error %v, want main.star:1:1: ... %s", text, err, want)
		}
	}
}

func TestFromEvalNamesPositionAndStack(t *testing.T) {
	src := sealed(map[string]string{"main.star": "def inner():\n    return 1 // 0\ndef main():\n    return inner()\n"})
	prog, err := Compile(src)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := prog.Init(&starlark.Thread{Name: "t"}, nil)
	fn, _ := Main(g, "main.star")
	_, err = starlark.Call(&starlark.Thread{Name: "t"}, fn, nil, nil)
	err = FromEval(err)
	msg := err.Error()
	for _, w := range []string{"main.star:2:", "division by zero", "Traceback", "main.star:4:", "in inner"} {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not contain %q", msg, w)
		}
	}
	if FromEval(nil) != nil {
		t.Error("FromEval(nil) != nil")
	}
	plain := errors.New("plain")
	if FromEval(plain) != plain {
		t.Error("FromEval changed a non-Starlark error")
	}
}
