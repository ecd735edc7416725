// Package web is drover server's web page: the job list, a job's step
// tree, its live output and logs, and the operator's actions. The page is
// plain HTML, CSS and JavaScript modules embedded in the binary: nothing
// is built or fetched at run time, and it talks to the server only
// through the HTTP API (docs/api.md), with the token the user enters.
//
// Only internal/server imports this package; it imports nothing of
// drover's.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// AssetPrefix is where the page's files are served; the page itself is
// at /.
const AssetPrefix = "/ui/"

// csp allows the page only its own files and its own server: no inline
// script, no other origin, no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// asset is one embedded file, read once.
type asset struct {
	body  []byte
	ctype string
	etag  string
}

// Handler serves the page at / and its files under AssetPrefix. Every
// answer is revalidated by its ETag, so a new binary's page is never
// mixed with an old one's scripts.
type Handler struct {
	files map[string]asset // by URL path
}

// New reads the embedded files.
func New() *Handler {
	h := &Handler{files: map[string]asset{}}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		a := asset{body: b, ctype: contentType(p), etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		rel := strings.TrimPrefix(p, "static/")
		if rel == "index.html" {
			h.files["/"] = a
			return nil
		}
		h.files[AssetPrefix+rel] = a
		return nil
	})
	if err != nil {
		// The files are compiled in; failing to read them is a broken build.
		panic("web: reading the embedded page: " + err.Error())
	}
	return h
}

// Register mounts the page on a mux: GET / and GET /ui/...; every other
// path stays the mux's.
func Register(m *http.ServeMux) {
	h := New()
	m.Handle("GET /{$}", h)
	m.Handle("GET "+AssetPrefix, h)
}

func contentType(p string) string {
	switch path.Ext(p) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	}
	if t := mime.TypeByExtension(path.Ext(p)); t != "" {
		return t
	}
	return "application/octet-stream"
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, ok := h.files[r.URL.Path]
	if !ok {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("404 page not found\n"))
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.ctype)
	hd.Set("ETag", a.etag)
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	if r.URL.Path == "/" {
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Frame-Options", "DENY")
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}
