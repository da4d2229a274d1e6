package rest

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Identity is the authenticated caller.
type Identity struct {
	UserID    string
	ProjectID string
	Roles     []string
}

// IsAdmin reports whether the caller has the "admin" role.
func (id Identity) IsAdmin() bool { return slices.Contains(id.Roles, "admin") }

// Authenticator turns the X-Auth-Token header into an Identity. It returns
// an errdefs.ErrUnauthenticated error for a missing or unknown token.
type Authenticator interface {
	Authenticate(token string) (Identity, error)
}

// authHeader carries the token, as with Keystone.
const authHeader = "X-Auth-Token"

func (s *server) authenticate(r *http.Request) (Identity, error) {
	token := r.Header.Get(authHeader)
	if token == "" {
		return Identity{}, fmt.Errorf("%w: authentication required: send a token in the %s header", errdefs.ErrUnauthenticated, authHeader)
	}
	return s.auth.Authenticate(token)
}

// NoAuth is authentication for local use, like Cinder's noauth: the token
// is "USER:PROJECT" and every caller is an administrator.
type NoAuth struct{}

// Authenticate implements Authenticator.
func (NoAuth) Authenticate(token string) (Identity, error) {
	user, project, ok := strings.Cut(token, ":")
	if !ok || user == "" || project == "" || strings.ContainsAny(token, " \t") {
		return Identity{}, fmt.Errorf("%w: with noauth the token must be USER:PROJECT", errdefs.ErrUnauthenticated)
	}
	return Identity{UserID: user, ProjectID: project, Roles: []string{"admin"}}, nil
}

// TokenFile authenticates tokens listed in a file (--auth tokens:FILE).
// Tokens are kept only as SHA-256 digests, so a lookup takes the same
// time however much of a guess matches.
type TokenFile struct {
	tokens map[[sha256.Size]byte]Identity
}

// LoadTokenFile reads a token file: one token per line,
//
//	TOKEN USER PROJECT [ROLE[,ROLE...]]
//
// separated by blanks. Blank lines and lines starting with # are ignored.
// Errors name the line; a token listed twice is an error.
func LoadTokenFile(path string) (*TokenFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	defer f.Close()
	tf := &TokenFile{tokens: map[[sha256.Size]byte]Identity{}}
	firstLine := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 3 || len(fields) > 4 {
			return nil, fmt.Errorf("%w: token file %s line %d: want TOKEN USER PROJECT [ROLE[,ROLE...]], got %d fields",
				errdefs.ErrInvalid, path, n, len(fields))
		}
		id := Identity{UserID: fields[1], ProjectID: fields[2]}
		if len(fields) == 4 {
			for role := range strings.SplitSeq(fields[3], ",") {
				if role == "" {
					return nil, fmt.Errorf("%w: token file %s line %d: empty role in %q", errdefs.ErrInvalid, path, n, fields[3])
				}
				id.Roles = append(id.Roles, role)
			}
		}
		key := sha256.Sum256([]byte(fields[0]))
		if first, dup := firstLine[key]; dup {
			return nil, fmt.Errorf("%w: token file %s line %d: the token is already defined on line %d", errdefs.ErrInvalid, path, n, first)
		}
		firstLine[key] = n
		tf.tokens[key] = id
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("token file %s: %w", path, err)
	}
	if len(tf.tokens) == 0 {
		return nil, fmt.Errorf("%w: token file %s defines no tokens", errdefs.ErrInvalid, path)
	}
	return tf, nil
}

// Authenticate implements Authenticator.
func (tf *TokenFile) Authenticate(token string) (Identity, error) {
	id, ok := tf.tokens[sha256.Sum256([]byte(token))]
	if !ok {
		return Identity{}, fmt.Errorf("%w: the token is not valid", errdefs.ErrUnauthenticated)
	}
	id.Roles = slices.Clone(id.Roles)
	return id, nil
}

// Len returns the number of tokens.
func (tf *TokenFile) Len() int { return len(tf.tokens) }
