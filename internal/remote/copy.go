package remote

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/drover/drover/internal/engine"
)

// Copy uploads t.Src to t.Dst on the host, or with t.Fetch downloads
// t.Src from the host to the local t.Dst. A destination that already
// holds the same content (by sha256) is left alone and the result says
// Skipped. Data goes to a temporary name beside the destination and is
// renamed into place, so an interrupted copy never leaves a partial file
// under the destination's name. A destination ending in / or naming a
// directory receives the file under its own name.
func (m *Manager) Copy(ctx context.Context, tr *engine.Transfer) (*engine.TransferResult, error) {
	if err := m.begin(); err != nil {
		return nil, err
	}
	defer m.ops.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(m.calls, cancel)
	defer stop()

	t, err := m.resolve(tr.Host)
	if err != nil {
		return nil, err
	}
	if tr.Src == "" || tr.Dst == "" {
		return nil, fmt.Errorf("copy: source and destination are both required")
	}
	if tr.Fetch {
		return m.download(ctx, t, tr)
	}
	return m.upload(ctx, t, tr)
}

// remotePath makes ~/x relative: SFTP and the login shell both start in
// the home directory.
func remotePath(p string) string {
	if p == "~" {
		return "."
	}
	return strings.TrimPrefix(p, "~/")
}

// tempName is where data goes before the rename: hidden, and the same
// for every attempt of one step, so a retry overwrites what a killed
// attempt left instead of piling up files.
func tempName(dst, jobID, stepKey string, join func(...string) string, dir func(string) string, base func(string) string) string {
	sum := sha256.Sum256([]byte(jobID + "\x00" + stepKey + "\x00" + dst))
	return join(dir(dst), "."+base(dst)+".drover-"+hex.EncodeToString(sum[:6]))
}

type remoteStat struct {
	kind string // dir, none, file
	hash string // empty when the host has no sha256 tool
}

func (m *Manager) statRemote(ctx context.Context, t *target, p string) (remoteStat, error) {
	out, _, err := m.runHelper(ctx, t, "X", statScript, p)
	if err != nil {
		return remoteStat{}, err
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return remoteStat{}, t.err(ErrProtocol, fmt.Errorf("stat %s: no answer", p), "")
	}
	st := remoteStat{kind: f[0]}
	if len(f) > 1 && len(f[1]) == 64 {
		st.hash = f[1]
	}
	return st, nil
}

func (m *Manager) upload(ctx context.Context, t *target, tr *engine.Transfer) (*engine.TransferResult, error) {
	src, err := os.Open(tr.Src)
	if err != nil {
		return nil, fmt.Errorf("copy to %s: %w", t.name, err)
	}
	defer src.Close()
	info, err := src.Stat()
	if err != nil {
		return nil, fmt.Errorf("copy to %s: %w", t.name, err)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("copy to %s: %s is not a regular file", t.name, tr.Src)
	}
	h := sha256.New()
	size, err := io.Copy(h, src)
	if err != nil {
		return nil, fmt.Errorf("copy to %s: read %s: %w", t.name, tr.Src, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	mode := fs.FileMode(tr.Mode).Perm()
	if tr.Mode == 0 {
		mode = info.Mode().Perm()
	}

	dst := remotePath(tr.Dst)
	st, err := m.statRemote(ctx, t, dst)
	if err != nil {
		return nil, err
	}
	if st.kind == "dir" || strings.HasSuffix(dst, "/") {
		dst = path.Join(dst, filepath.Base(tr.Src))
		if st, err = m.statRemote(ctx, t, dst); err != nil {
			return nil, err
		}
	}
	res := &engine.TransferResult{Bytes: size, SHA256: sum}
	tmp := tempName(dst, tr.JobID, tr.StepKey, path.Join, path.Dir, path.Base)

	err = m.withSFTP(ctx, t, func(c *sftp.Client) error {
		if st.kind == "file" {
			same := st.hash == sum
			if st.hash == "" {
				// No sha256 tool on the host: hash over SFTP, still
				// cheaper than a write when the sizes match.
				if fi, err := c.Stat(dst); err == nil && fi.Size() == size {
					got, _, err := hashRemote(c, dst)
					same = err == nil && got == sum
				}
			}
			if same {
				res.Skipped = true
				if tr.Mode != 0 {
					if err := c.Chmod(dst, mode); err != nil {
						return fmt.Errorf("chmod %s: %w", dst, err)
					}
				}
				return nil
			}
		}
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			return err
		}
		f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
		if err != nil {
			return fmt.Errorf("create %s: %w", tmp, err)
		}
		_, err = f.ReadFrom(src)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = c.Chmod(tmp, mode)
		}
		if err == nil {
			err = c.PosixRename(tmp, dst)
		}
		if err != nil {
			c.Remove(tmp)
			return fmt.Errorf("write %s: %w", dst, err)
		}
		return nil
	})
	if err != nil {
		if ctx.Err() != nil {
			// The SFTP session died with ctx, so its own clean-up could
			// not run: remove the partial upload over a new session.
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, _, rerr := m.runHelper(cctx, t, "X", `rm -f -- "$1"`, tmp); rerr != nil {
				m.opts.Logger.Warn("could not remove a cancelled upload's temporary file", "host", t.name, "file", tmp, "err", rerr)
			}
		}
		return nil, m.copyErr(ctx, t, err)
	}
	return res, nil
}

func (m *Manager) download(ctx context.Context, t *target, tr *engine.Transfer) (*engine.TransferResult, error) {
	src := remotePath(tr.Src)
	st, err := m.statRemote(ctx, t, src)
	if err != nil {
		return nil, err
	}
	switch st.kind {
	case "none":
		return nil, fmt.Errorf("fetch from %s: %s: no such file on the host", t.name, tr.Src)
	case "dir":
		return nil, fmt.Errorf("fetch from %s: %s is a directory; copy fetches single files", t.name, tr.Src)
	}
	dst := tr.Dst
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() || strings.HasSuffix(dst, string(os.PathSeparator)) {
		dst = filepath.Join(dst, path.Base(src))
	}
	if st.hash != "" {
		if got, n, err := hashLocal(dst); err == nil && got == st.hash {
			return &engine.TransferResult{Bytes: n, SHA256: got, Skipped: true}, nil
		}
	}
	res := &engine.TransferResult{}
	err = m.withSFTP(ctx, t, func(c *sftp.Client) error {
		rf, err := c.Open(src)
		if err != nil {
			return fmt.Errorf("open %s: %w", src, err)
		}
		defer rf.Close()
		info, err := rf.Stat()
		if err != nil {
			return err
		}
		if st.hash == "" {
			if got, n, err := hashLocal(dst); err == nil && n == info.Size() {
				if rsum, _, err := hashRemote(c, src); err == nil && rsum == got {
					res.Bytes, res.SHA256, res.Skipped = n, got, true
					return nil
				}
				if _, err := rf.Seek(0, io.SeekStart); err != nil {
					return err
				}
			}
		}
		tmp := tempName(dst, tr.JobID, tr.StepKey, filepath.Join, filepath.Dir, filepath.Base)
		lf, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		h := sha256.New()
		n, err := rf.WriteTo(io.MultiWriter(lf, h))
		if err == nil {
			err = lf.Sync()
		}
		if cerr := lf.Close(); err == nil {
			err = cerr
		}
		mode := fs.FileMode(tr.Mode).Perm()
		if tr.Mode == 0 {
			mode = info.Mode().Perm()
		}
		if err == nil {
			err = os.Chmod(tmp, mode)
		}
		if err == nil {
			err = os.Rename(tmp, dst)
		}
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("write %s: %w", dst, err)
		}
		res.Bytes, res.SHA256 = n, hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		return nil, m.copyErr(ctx, t, err)
	}
	return res, nil
}

func (m *Manager) copyErr(ctx context.Context, t *target, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return fmt.Errorf("copy on host %s (%s): %w", t.name, t.String(), err)
}

// withSFTP runs fn with an SFTP client over one pooled session. Ending
// ctx closes the session, which aborts a transfer in progress.
func (m *Manager) withSFTP(ctx context.Context, t *target, fn func(*sftp.Client) error) error {
	return m.withSession(ctx, t, func(_ *conn, s *ssh.Session) error {
		w, err := s.StdinPipe()
		if err != nil {
			return err
		}
		r, err := s.StdoutPipe()
		if err != nil {
			return err
		}
		if err := s.RequestSubsystem("sftp"); err != nil {
			return t.err(ErrProtocol, fmt.Errorf("start sftp: %w", err), "enable the sftp Subsystem in the host's sshd_config")
		}
		c, err := sftp.NewClientPipe(r, w, sftp.UseConcurrentWrites(true), sftp.UseConcurrentReads(true))
		if err != nil {
			return t.err(ErrProtocol, fmt.Errorf("start sftp: %w", err), "")
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close(); s.Close() })
		defer stop()
		return fn(c)
	})
}

func hashRemote(c *sftp.Client, p string) (string, int64, error) {
	f, err := c.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := f.WriteTo(h)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func hashLocal(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
