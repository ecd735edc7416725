package cli

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/drover/drover/internal/client"
)

// Client mode: with --server URL (or DROVER_SERVER) every job command
// works through that drover server's API, with the token in DROVER_TOKEN
// and, for a server whose certificate no system authority signed,
// DROVER_CA naming a PEM file of the authority to trust.

// serverURL is the server of client mode, empty in local mode.
func (a *app) serverURL() string {
	if a.serverFlag != "" {
		return a.serverFlag
	}
	return a.getenv("DROVER_SERVER")
}

// client returns the API client in client mode, nil in local mode.
func (a *app) client() (*client.Client, error) {
	if a.cl != nil {
		return a.cl, nil
	}
	url := a.serverURL()
	if url == "" {
		return nil, nil
	}
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	hc := &http.Client{}
	if ca := a.getenv("DROVER_CA"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("DROVER_CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("DROVER_CA: %s holds no PEM certificate", ca)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		hc.Transport = tr
	}
	c, err := client.New(url, a.getenv("DROVER_TOKEN"), hc)
	if err != nil {
		return nil, usageErr("--server: %v", err)
	}
	a.cl = c
	return c, nil
}

// reconnecting reports a broken event stream once per outage, on stderr.
func (a *app) reconnecting() func(error, time.Duration) {
	var mu sync.Mutex
	var last time.Time
	return func(err error, wait time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) < 30*time.Second {
			last = time.Now()
			return
		}
		last = time.Now()
		fmt.Fprintf(a.stderr, "drover: the event stream broke (%v); reconnecting\n", err)
	}
}
