package server

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/job"
)

// user is who makes a request.
type user struct {
	name string
	role auth.Role
}

// sees reports whether u may see j: viewers and admins see every job,
// operators the ones they submitted (children inherit their parent's
// submitter).
func (u user) sees(j *job.Job) bool { return u.role.SeesAll() || j.CreatedBy == u.name }

// actsOn reports whether u may change j.
func (u user) actsOn(j *job.Job) bool {
	return u.role == auth.Admin || (u.role == auth.Operator && j.CreatedBy == u.name)
}

// cookieName is the session cookie a web page logs in with (browsers'
// EventSource cannot send an Authorization header).
const cookieName = "drover_token"

// csrfHeader must accompany a request authenticated by the cookie that
// changes anything: a page of another site cannot send it without the
// browser asking this server first, which it does not allow.
const csrfHeader = "X-Drover-Request"

// authenticate finds the request's user. Without an auth store every
// request is an anonymous admin (drover server --insecure-no-auth, on a
// loopback address only).
func (s *Server) authenticate(r *http.Request) (user, *httpError) {
	if s.auth == nil {
		return user{name: "anonymous", role: auth.Admin}, nil
	}
	secret, fromCookie := "", false
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(rest) == "" {
			return user{}, errorf(http.StatusUnauthorized, "unauthorized", "the Authorization header must be \"Bearer TOKEN\"")
		}
		secret = strings.TrimSpace(rest)
	} else if c, err := r.Cookie(cookieName); err == nil && c.Value != "" {
		secret, fromCookie = c.Value, true
	}
	if secret == "" {
		return user{}, errorf(http.StatusUnauthorized, "unauthorized", "this server needs a token: send \"Authorization: Bearer TOKEN\" (drover token create makes one; the command line reads DROVER_TOKEN)")
	}
	if fromCookie && r.Method != http.MethodGet && r.Method != http.MethodHead && r.Header.Get(csrfHeader) == "" {
		return user{}, forbidden("a request authenticated by the session cookie that changes anything needs the %s header", csrfHeader)
	}
	t, err := s.lookupToken(r.Context(), secret)
	if err != nil {
		if errors.Is(err, job.ErrNotFound) {
			return user{}, errorf(http.StatusUnauthorized, "unauthorized", "unknown or revoked token")
		}
		return user{}, fromErr(err)
	}
	s.touch(t.Name)
	return user{name: t.Name, role: t.Role}, nil
}

func (s *Server) lookupToken(ctx context.Context, secret string) (*auth.Token, error) {
	h := auth.Hash(secret)
	t, err := s.auth.TokenByHash(ctx, h)
	if err != nil {
		return nil, err
	}
	// The store found it by hash; compare anyway, in constant time.
	if subtle.ConstantTimeCompare([]byte(t.Hash), []byte(h)) != 1 {
		return nil, job.ErrNotFound
	}
	if _, err := auth.ParseRole(string(t.Role)); err != nil {
		return nil, job.ErrNotFound
	}
	return t, nil
}

// touch records a token's use at most once a minute, off the request's
// path.
func (s *Server) touch(name string) {
	now := time.Now()
	s.touchMu.Lock()
	last := s.touched[name]
	fresh := now.Sub(last) < time.Minute
	if !fresh {
		s.touched[name] = now
	}
	s.touchMu.Unlock()
	if fresh {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.auth.TouchToken(ctx, name, now); err != nil {
			s.log.Debug("recording a token's use", "token", name, "err", err)
		}
	}()
}

// handler is an API handler: it gets the request's user and returns a
// refusal or nil.
type handler func(w http.ResponseWriter, r *http.Request, u user) *httpError

// authed wraps an API handler: the request needs a user of at least role
// need.
func (s *Server) authed(need auth.Role, h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		u, he := s.authenticate(r)
		if he == nil && !u.role.Allows(need) {
			he = forbidden("%s %s needs the %s role; %s is a %s", r.Method, r.URL.Path, need, u.name, u.role)
		}
		if he == nil {
			setUser(r, u.name)
			he = h(w, r, u)
		}
		if he != nil {
			if he.cause != nil {
				s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "user", u.name, "err", he.cause)
			}
			writeError(w, he)
		}
	}
}

// login sets the session cookie from a token, for a web page.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Token string `json:"token"`
	}
	if he := decode(w, r, &body, 4096, false); he != nil {
		writeError(w, he)
		return
	}
	if s.auth == nil {
		writeJSON(w, http.StatusOK, map[string]string{"name": "anonymous", "role": string(auth.Admin)})
		return
	}
	t, err := s.lookupToken(r.Context(), body.Token)
	if err != nil {
		if errors.Is(err, job.ErrNotFound) {
			writeError(w, errorf(http.StatusUnauthorized, "unauthorized", "unknown or revoked token"))
			return
		}
		writeError(w, fromErr(err))
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: body.Token, Path: "/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	writeJSON(w, http.StatusOK, map[string]string{"name": t.Name, "role": string(t.Role)})
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}
