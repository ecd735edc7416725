// Package auth holds drover server's users and roles: API tokens, how they
// are made and hashed, and what each role may do. Stores keep tokens;
// the server checks them.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Role is what a token's user may do.
type Role string

// The roles, from least to most allowed.
const (
	// Viewer reads every job, workflow and metric, and changes nothing.
	Viewer Role = "viewer"
	// Operator runs jobs and acts on (and sees) the jobs they submitted.
	Operator Role = "operator"
	// Admin acts on every job and manages workflows.
	Admin Role = "admin"
)

// Roles lists the roles from least to most allowed.
var Roles = []Role{Viewer, Operator, Admin}

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	for _, r := range Roles {
		if string(r) == s {
			return r, nil
		}
	}
	return "", fmt.Errorf("unknown role %q (want admin, operator or viewer)", s)
}

func (r Role) rank() int {
	for i, x := range Roles {
		if x == r {
			return i + 1
		}
	}
	return 0
}

// Allows reports whether r may do what needs at least the role need.
func (r Role) Allows(need Role) bool { return r.rank() >= need.rank() && r.rank() > 0 }

// SeesAll reports whether r sees every user's jobs. Operators see only
// their own.
func (r Role) SeesAll() bool { return r == Viewer || r == Admin }

// Token is a stored API token. The secret itself is never stored.
type Token struct {
	Name     string    `json:"name"` // the user the token acts as
	Role     Role      `json:"role"`
	Hash     string    `json:"-"` // hex SHA-256 of the secret
	Created  time.Time `json:"created"`
	LastUsed time.Time `json:"last_used,omitzero"`
}

// SecretPrefix starts every token secret, so that secret scanners and
// people can tell one.
const SecretPrefix = "drover_"

// NewSecret returns a new random token secret and its hash. A token is 32
// random bytes: guessing one is hopeless, so a fast hash (SHA-256) is
// the right way to store it, where a password would need a slow one.
func NewSecret() (secret, hash string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("new token: %w", err)
	}
	secret = SecretPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, Hash(secret), nil
}

// Hash is how a secret is stored and looked up.
func Hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// ErrExists is returned when a token of that name exists.
var ErrExists = errors.New("a token of that name exists")

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// CheckName validates a token (user) name.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("token name %q: use 1 to 64 letters, digits and . _ @ - (starting with a letter or digit)", name)
	}
	if strings.EqualFold(name, "anonymous") {
		return fmt.Errorf("token name %q is reserved", name)
	}
	return nil
}
