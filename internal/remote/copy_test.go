package remote_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/remote/sshtest"
)

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// noTemp fails if a copy left its temporary file in dir.
func noTemp(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".drover-") {
			t.Errorf("temporary file left: %s", filepath.Join(dir, e.Name()))
		}
	}
}

func TestCopy(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	m := newManager(t, s, nil)
	h := engineHost(s, s.Hosts[0])
	ctx := context.Background()
	local := t.TempDir()

	content := []byte(strings.Repeat("drover copies files\n", 50000)) // ~1 MB
	src := filepath.Join(local, "app.conf")
	if err := os.WriteFile(src, content, 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(s.UserDir, "app.conf")
	up := &engine.Transfer{JobID: "copy", StepKey: "1", Host: h, Src: src, Dst: dst, Mode: 0o640}

	res, err := m.Copy(ctx, up)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != int64(len(content)) || res.SHA256 != sum(content) || res.Skipped {
		t.Errorf("upload result %+v", res)
	}
	got, err := os.ReadFile(dst)
	if err != nil || sum(got) != sum(content) {
		t.Fatalf("remote file: %v, %d bytes", err, len(got))
	}
	if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	noTemp(t, s.UserDir)

	// Same content: nothing sent, the file is not rewritten.
	before, _ := os.Stat(dst)
	time.Sleep(10 * time.Millisecond)
	res, err = m.Copy(ctx, up)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(dst)
	if !res.Skipped || res.SHA256 != sum(content) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("second upload %+v, mtime %v -> %v: want skipped", res, before.ModTime(), after.ModTime())
	}

	// Changed content of the same size is sent.
	changed := append([]byte(nil), content...)
	changed[0] = 'D'
	if err := os.WriteFile(src, changed, 0o644); err != nil {
		t.Fatal(err)
	}
	if res, err = m.Copy(ctx, up); err != nil || res.Skipped || res.SHA256 != sum(changed) {
		t.Fatalf("changed upload %+v, %v", res, err)
	}
	if got, _ := os.ReadFile(dst); sum(got) != sum(changed) {
		t.Error("remote file not updated")
	}

	// Into a directory, by ~/ path.
	rel, err := filepath.Rel(s.Home, s.UserDir)
	if err != nil {
		t.Fatal(err)
	}
	res, err = m.Copy(ctx, &engine.Transfer{JobID: "copy", StepKey: "2", Host: h, Src: src, Dst: "~/" + rel + "/"})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(s.UserDir, "app.conf")); sum(got) != res.SHA256 {
		t.Errorf("copy into a directory: %+v", res)
	}

	// Fetch it back.
	out := filepath.Join(local, "fetched")
	fetch := &engine.Transfer{JobID: "copy", StepKey: "3", Host: h, Src: dst, Dst: out, Fetch: true}
	res, err = m.Copy(ctx, fetch)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); sum(got) != sum(changed) || res.SHA256 != sum(changed) || res.Bytes != int64(len(changed)) || res.Skipped {
		t.Errorf("fetch %+v", res)
	}
	noTemp(t, local)
	res, err = m.Copy(ctx, fetch)
	if err != nil || !res.Skipped || res.SHA256 != sum(changed) {
		t.Errorf("second fetch %+v, %v: want skipped", res, err)
	}

	_, err = m.Copy(ctx, &engine.Transfer{JobID: "copy", StepKey: "4", Host: h, Src: filepath.Join(s.UserDir, "missing"), Dst: out, Fetch: true})
	if err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("fetch of a missing file: %v", err)
	}
	_, err = m.Copy(ctx, &engine.Transfer{JobID: "copy", StepKey: "5", Host: h, Src: src, Dst: "/nonexistent-dir/x"})
	if err == nil || !strings.Contains(err.Error(), "host h1") {
		t.Errorf("upload into a missing directory: %v", err)
	}
}

func TestCopyCancelledLeavesNoFile(t *testing.T) {
	t.Parallel()
	s := sshtest.Start(t, 1)
	slow := s.SlowHost(s.Hosts[0], 5*time.Millisecond)
	m := newManager(t, s, nil)
	h := engineHost(s, slow)

	src := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(src, make([]byte, 32<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(s.UserDir, "big")
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := m.Copy(ctx, &engine.Transfer{JobID: "cancel", StepKey: "1", Host: h, Src: src, Dst: dst})
		errc <- err
	}()
	// Cancel once data is flowing into the temporary file.
	eventually(t, 10*time.Second, "the upload to start", func() bool {
		entries, _ := os.ReadDir(s.UserDir)
		for _, e := range entries {
			if fi, err := e.Info(); err == nil && strings.Contains(e.Name(), ".drover-") && fi.Size() > 0 {
				return true
			}
		}
		return false
	})
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Errorf("destination exists after a cancelled copy: %v", err)
	}
	eventually(t, 5*time.Second, "the temporary file to go", func() bool {
		entries, _ := os.ReadDir(s.UserDir)
		for _, e := range entries {
			if strings.Contains(e.Name(), ".drover-") {
				return false
			}
		}
		return true
	})
}
