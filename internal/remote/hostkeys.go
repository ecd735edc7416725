package remote

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostKeys verifies host keys against known_hosts files, reloading them
// when they change on disk (an operator ran ssh-keygen -R after a changed
// key, say) and recording new keys when allowed.
type hostKeys struct {
	files  []string
	accept bool
	log    *slog.Logger
	added  *atomic.Int64

	// probe is a key no host has: checking it lists every key known for a
	// host, which knownhosts offers no other way to do.
	probe ssh.PublicKey

	mu    sync.Mutex
	cb    ssh.HostKeyCallback
	stamp string
}

func newHostKeys(files []string, accept bool, log *slog.Logger, added *atomic.Int64) (*hostKeys, error) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	probe, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	k := &hostKeys{files: files, accept: accept, log: log, added: added, probe: probe}
	if _, err := k.callback(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *hostKeys) fileStamp() (string, []string) {
	var b strings.Builder
	var existing []string
	for _, f := range k.files {
		st, err := os.Stat(f)
		if err != nil {
			continue
		}
		existing = append(existing, f)
		fmt.Fprintf(&b, "%s %d %d;", f, st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), existing
}

func (k *hostKeys) callback() (ssh.HostKeyCallback, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.callbackLocked()
}

func (k *hostKeys) callbackLocked() (ssh.HostKeyCallback, error) {
	stamp, existing := k.fileStamp()
	if k.cb != nil && stamp == k.stamp {
		return k.cb, nil
	}
	cb, err := knownhosts.New(existing...)
	if err != nil {
		return nil, fmt.Errorf("read known_hosts: %w", err)
	}
	k.cb, k.stamp = cb, stamp
	return cb, nil
}

// known lists the keys known_hosts holds for hostport.
func (k *hostKeys) known(hostport string) ([]knownhosts.KnownKey, error) {
	cb, err := k.callback()
	if err != nil {
		return nil, err
	}
	err = cb(hostport, fakeAddr(hostport), k.probe)
	var ke *knownhosts.KeyError
	if errors.As(err, &ke) {
		return ke.Want, nil
	}
	return nil, nil
}

// algorithms returns the host key algorithms to ask for, so that the
// server presents a key of a type known_hosts holds for it: otherwise a
// host known by its ECDSA key that prefers ED25519 would look changed.
func algorithms(known []knownhosts.KnownKey) []string {
	var out []string
	seen := map[string]bool{}
	add := func(a ...string) {
		for _, x := range a {
			if !seen[x] {
				seen[x] = true
				out = append(out, x)
			}
		}
	}
	for _, k := range known {
		switch t := k.Key.Type(); t {
		case ssh.KeyAlgoRSA:
			add(ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			add(t)
		}
	}
	return out
}

// verify checks key for t at hostport. It is the handshake's
// HostKeyCallback.
func (k *hostKeys) verify(t *target, hostport string, remote net.Addr, key ssh.PublicKey) error {
	cb, err := k.callback()
	if err != nil {
		return t.err(ErrHostKeyUnknown, err, "fix or move the known_hosts file")
	}
	err = cb(hostport, remote, key)
	if err == nil {
		return nil
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case errors.As(err, &re):
		return t.err(ErrHostKeyChanged, fmt.Errorf("it presents %s, which %s:%d marks @revoked", describeKey(key), re.Revoked.Filename, re.Revoked.Line),
			"do not connect until the host's keys are replaced")
	case errors.As(err, &ke) && len(ke.Want) > 0:
		old := ke.Want[0]
		return t.err(ErrHostKeyChanged,
			fmt.Errorf("it presents %s but %s:%d holds %s for %s", describeKey(key), old.Filename, old.Line, describeKey(old.Key), knownhosts.Normalize(hostport)),
			fmt.Sprintf("someone may be intercepting the connection; if the host was reinstalled, verify its new key, remove the old one with `ssh-keygen -R '%s' -f %s` and connect again",
				knownhosts.Normalize(hostport), old.Filename))
	case errors.As(err, &ke):
		if k.accept {
			return k.add(t, hostport, remote, key)
		}
		host, port, _ := net.SplitHostPort(hostport)
		return t.err(ErrHostKeyUnknown,
			fmt.Errorf("%s has no key for %s (it presents %s)", strings.Join(k.files, " or "), knownhosts.Normalize(hostport), describeKey(key)),
			fmt.Sprintf("verify the key and add it with `ssh-keyscan -p %s %s >> %s`, or run with --accept-new-host-keys to record keys of new hosts", port, host, k.files[0]))
	}
	return t.err(ErrHostKeyUnknown, err, "")
}

// add records a new host key, unless another handshake did meanwhile.
func (k *hostKeys) add(t *target, hostport string, remote net.Addr, key ssh.PublicKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	cb, err := k.callbackLocked()
	if err != nil {
		return t.err(ErrHostKeyUnknown, err, "")
	}
	err = cb(hostport, remote, key)
	var ke *knownhosts.KeyError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ke) && len(ke.Want) > 0:
		// A different key was recorded meanwhile: never overwrite.
		return t.err(ErrHostKeyChanged, fmt.Errorf("it presents %s but %s:%d now holds %s", describeKey(key), ke.Want[0].Filename, ke.Want[0].Line, describeKey(ke.Want[0].Key)), "")
	case !errors.As(err, &ke):
		return t.err(ErrHostKeyUnknown, err, "")
	}
	file := k.files[0]
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return t.err(ErrHostKeyUnknown, fmt.Errorf("record its key: %w", err), "")
	}
	f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return t.err(ErrHostKeyUnknown, fmt.Errorf("record its key: %w", err), "")
	}
	_, werr := f.WriteString(knownhosts.Line([]string{knownhosts.Normalize(hostport)}, key) + "\n")
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return t.err(ErrHostKeyUnknown, fmt.Errorf("record its key: %w", werr), "")
	}
	k.added.Add(1)
	k.log.Warn("recorded new host key", "host", t.name, "addr", knownhosts.Normalize(hostport),
		"key", describeKey(key), "file", file)
	return nil
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }
