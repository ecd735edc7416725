package web_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/drover/drover/internal/web"
)

func serve(t *testing.T) *httptest.Server {
	t.Helper()
	m := http.NewServeMux()
	web.Register(m)
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "api", http.StatusTeapot) })
	hs := httptest.NewServer(m)
	t.Cleanup(hs.Close)
	return hs
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// modules lists the page's JavaScript modules, as the source tree has
// them.
func modules(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("static/js")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".js") {
			out = append(out, e.Name())
		}
	}
	if len(out) == 0 {
		t.Fatal("no module in static/js")
	}
	return out
}

func TestPageAndAssets(t *testing.T) {
	t.Parallel()
	hs := serve(t)

	res, body := get(t, hs.URL+"/")
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	csp := res.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	// Every file the page refers to is served, with its type, and nothing
	// comes from another origin.
	refs := regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(body, -1)
	if len(refs) < 3 {
		t.Fatalf("the page refers to %d files", len(refs))
	}
	for _, m := range refs {
		u := m[1]
		if strings.Contains(u, "//") {
			t.Errorf("the page refers to another origin: %s", u)
			continue
		}
		r, _ := get(t, hs.URL+u)
		if r.StatusCode != 200 {
			t.Errorf("GET %s: %d", u, r.StatusCode)
		}
	}

	want := map[string]string{"/ui/app.css": "text/css", "/ui/favicon.svg": "image/svg+xml"}
	for _, m := range modules(t) {
		want["/ui/js/"+m] = "text/javascript"
	}
	for path, ctype := range want {
		r, _ := get(t, hs.URL+path)
		if r.StatusCode != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %d %q, want 200 %s", path, r.StatusCode, r.Header.Get("Content-Type"), ctype)
		}
		if r.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no nosniff", path)
		}
	}
}

func TestModulesImportOnlyServedFiles(t *testing.T) {
	t.Parallel()
	hs := serve(t)
	// Every import of every module resolves to a served module: a typo
	// would only show in a browser otherwise.
	imp := regexp.MustCompile(`(?m)^import .* from '(\./[^']+)';|^import '(\./[^']+)';`)
	for _, name := range modules(t) {
		_, src := get(t, hs.URL+"/ui/js/"+name)
		for _, m := range imp.FindAllStringSubmatch(src, -1) {
			dep := m[1] + m[2]
			r, _ := get(t, hs.URL+"/ui/js/"+strings.TrimPrefix(dep, "./"))
			if r.StatusCode != 200 {
				t.Errorf("%s imports %s: %d", name, dep, r.StatusCode)
			}
		}
	}
}

func TestRevalidation(t *testing.T) {
	t.Parallel()
	hs := serve(t)
	res, _ := get(t, hs.URL+"/ui/js/main.js")
	etag := res.Header.Get("ETag")
	if etag == "" || res.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("ETag %q, Cache-Control %q", etag, res.Header.Get("Cache-Control"))
	}
	res, body := get(t, hs.URL+"/ui/js/main.js", "If-None-Match", etag)
	if res.StatusCode != http.StatusNotModified || body != "" {
		t.Fatalf("revalidation: %d, %d bytes", res.StatusCode, len(body))
	}
}

func TestOtherPathsStayTheMuxs(t *testing.T) {
	t.Parallel()
	hs := serve(t)
	for _, p := range []string{"/api/v1/jobs", "/index.html", "/favicon.ico", "/metrics"} {
		if r, _ := get(t, hs.URL+p); r.StatusCode != http.StatusTeapot {
			t.Errorf("GET %s: %d, want the mux's own handler", p, r.StatusCode)
		}
	}
	if r, _ := get(t, hs.URL+"/ui/nope.js"); r.StatusCode != http.StatusNotFound {
		t.Errorf("GET /ui/nope.js: %d", r.StatusCode)
	}
	req, _ := http.NewRequest("POST", hs.URL+"/", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusTeapot {
		t.Errorf("POST /: %d, want the mux's own handler", res.StatusCode)
	}
}

// The embedded page holds no reference to another origin: the page must
// work on a machine without Internet.
func TestNoExternalReferences(t *testing.T) {
	t.Parallel()
	hs := serve(t)
	ext := regexp.MustCompile(`(?i)(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}`)
	paths := []string{"/", "/ui/app.css", "/ui/favicon.svg"}
	for _, m := range modules(t) {
		paths = append(paths, "/ui/js/"+m)
	}
	for _, p := range paths {
		_, body := get(t, hs.URL+p)
		for _, m := range ext.FindAllString(body, -1) {
			if strings.HasSuffix(m, "//www.w3.org") {
				continue // an XML namespace, never fetched
			}
			t.Errorf("%s refers to %s", p, m)
		}
	}
}
