package fleettest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// copyStar uploads a file to the target (under ~), downloads it back,
// runs a command that the test kills the controller in, and reports.
const copyStar = `
def main():
    up = copy("@SRC@", "~/@RBASE@/" + target + ".bin")
    sh("touch @R@/" + target + ".copied; sleep 1.5")
    down = copy("@R@/" + target + ".bin", "@BACK@/" + target + ".bin", fetch = True)
    emit(json.encode({
        "up": {"bytes": up.bytes, "sha256": up.sha256, "skipped": up.skipped},
        "down": {"bytes": down.bytes, "sha256": down.sha256, "skipped": down.skipped},
    }))
`

type copyResult struct {
	Bytes   int64  `json:"bytes"`
	SHA256  string `json:"sha256"`
	Skipped bool   `json:"skipped"`
}

// TestCopy: copy() uploads over SFTP and with fetch=True downloads,
// returning bytes and sha256. The controller is killed after the upload
// and before it was committed: the resumed job runs the copy step again
// and does not re-send the file already there with the same hash.
func TestCopy(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 2)
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	sum := sha256.Sum256(data)
	want := hex.EncodeToString(sum[:])
	src := filepath.Join(f.dir, "payload.bin")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(f.dir, "back")
	if err := os.Mkdir(back, 0o755); err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer("@SRC@", src, "@RBASE@", filepath.Base(f.remote), "@BACK@", back).Replace(copyStar)
	wf := f.write("copy.star", text)
	inv := f.write("hosts.ini", "[all]\n"+f.invLine("a", f.host(0), "")+f.invLine("b", f.host(1), ""))

	p := f.start("run", wf, "--inventory", inv)
	f.eventually(30*time.Second, "both uploads", func() bool { return f.remoteExists("a.copied") && f.remoteExists("b.copied") })
	if !p.Kill() {
		t.Fatalf("drover ended before the kill: %s", p)
	}
	inodes := map[string]uint64{}
	for _, h := range []string{"a", "b"} {
		got, err := os.ReadFile(filepath.Join(f.remote, h+".bin"))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s.bin on the host: %v (%d bytes)", h, err, len(got))
		}
		inodes[h] = inode(t, filepath.Join(f.remote, h+".bin"))
	}

	f.must(0, 60*time.Second, "resume", "--all")
	parent := f.parent()
	for h, c := range f.children(parent.ID) {
		out := f.output(c.ID)
		var res struct{ Up, Down copyResult }
		if len(out) != 1 || json.Unmarshal([]byte(out[0]), &res) != nil {
			t.Fatalf("output of %s: %q", c.ID, out)
		}
		wantRes := copyResult{Bytes: int64(len(data)), SHA256: want}
		if res.Up != (copyResult{Bytes: wantRes.Bytes, SHA256: want, Skipped: true}) {
			t.Errorf("%s: the resumed upload returned %+v, want %d bytes, sha256 %s, skipped (the file was there)", h, res.Up, len(data), want)
		}
		if res.Down != wantRes {
			t.Errorf("%s: the download returned %+v, want %+v", h, res.Down, wantRes)
		}
		if got := inode(t, filepath.Join(f.remote, h+".bin")); got != inodes[h] {
			t.Errorf("%s: the resumed copy sent the file again (new inode)", h)
		}
		got, err := os.ReadFile(filepath.Join(back, h+".bin"))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("downloaded %s.bin: %v (%d bytes)", h, err, len(got))
		}
		// The step journal records the copy on its host.
		v := f.show(c.ID)
		if len(v.Steps) != 3 || v.Steps[0].Activity != "copy" || v.Steps[0].Host != h {
			t.Errorf("steps of %s: %+v", c.ID, v.Steps)
		}
	}

	// A second run copies again to where the same content is: skipped; a
	// changed source is sent.
	wf2 := f.write("again.star", strings.NewReplacer("@SRC@", src, "@R@", f.remote).Replace(`
def main(name):
    r = copy("@SRC@", "@R@/" + name + ".bin")
    emit(json.encode({"bytes": r.bytes, "sha256": r.sha256, "skipped": r.skipped}))
`))
	f.must(0, 60*time.Second, "run", wf2, "--targets", f.dest(0), "-p", "name=a")
	data[0] ^= 0xff
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f.must(0, 60*time.Second, "run", wf2, "--targets", f.dest(1), "-p", "name=b")
	sum = sha256.Sum256(data)
	checked := 0
	for _, j := range f.jobs(true) {
		if j.ParentID == "" || j.ParentID == parent.ID {
			continue
		}
		checked++
		out := f.output(j.ID)
		var r copyResult
		if len(out) != 1 || json.Unmarshal([]byte(out[0]), &r) != nil {
			t.Fatalf("output of %s: %q", j.ID, out)
		}
		if j.Target == f.dest(0) && (!r.Skipped || r.SHA256 != want) {
			t.Errorf("same content copied again: %+v, want skipped", r)
		}
		if j.Target == f.dest(1) && (r.Skipped || r.SHA256 != hex.EncodeToString(sum[:])) {
			t.Errorf("changed content: %+v, want sent with the new hash", r)
		}
	}
	if checked != 2 {
		t.Errorf("found %d child jobs of the second runs, want 2", checked)
	}
	got, _ := os.ReadFile(filepath.Join(f.remote, "b.bin"))
	if !bytes.Equal(got, data) {
		t.Error("the changed file did not reach the host")
	}
}

// dest is host i as an SSH destination, user@addr:port.
func (f *fleet) dest(i int) string {
	h := f.host(i)
	return f.s.User + "@" + h.HostPort()
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}
