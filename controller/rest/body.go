package rest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Request bodies are decoded strictly: an object's keys must be known
// (fields), values must have the right type, and errors name the field.
// The opt* types record whether a field was sent and whether it was null.

// readObject reads the request body (at most maxBody bytes) as one JSON
// object.
func (s *server) readObject(w http.ResponseWriter, r *http.Request) (map[string]json.RawMessage, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, fmt.Errorf("%w: the request body is larger than the limit of %d bytes", errdefs.ErrTooLarge, s.maxBody)
		}
		return nil, invalidf("reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, invalidf("the request body is empty; it must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, invalidf("malformed JSON in the request body: %v", jsonErr(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalidf("malformed JSON in the request body: unexpected data after the top-level value")
	}
	var obj map[string]json.RawMessage
	if raw[0] != '{' || json.Unmarshal(raw, &obj) != nil {
		return nil, invalidf("the request body must be a JSON object")
	}
	return obj, nil
}

func jsonErr(err error) string {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "unexpected end of input"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// readResource reads the request body and returns its object under key
// (see resource).
func (s *server) readResource(w http.ResponseWriter, r *http.Request, key string, extra ...string) (json.RawMessage, error) {
	body, err := s.readObject(w, r)
	if err != nil {
		return nil, err
	}
	return resource(body, key, extra...)
}

// resource returns body[key], which must be a JSON object, after checking
// that body has no keys but key and extra.
func resource(body map[string]json.RawMessage, key string, extra ...string) (json.RawMessage, error) {
	for _, k := range slices.Sorted(maps.Keys(body)) {
		if k != key && !slices.Contains(extra, k) {
			return nil, invalidf("unknown key %q in the request body; expected %q", k, key)
		}
	}
	raw, ok := body[key]
	if !ok {
		return nil, invalidf("the request body must contain %q", key)
	}
	if isNull(raw) || raw[0] != '{' {
		return nil, invalidf("%q must be a JSON object", key)
	}
	return raw, nil
}

func isNull(raw json.RawMessage) bool { return len(raw) == 0 || string(raw) == "null" }

// fields maps the accepted keys of an object to where their values go.
type fields map[string]json.Unmarshaler

// decodeObject decodes the JSON object raw (what names it in errors) into
// f, rejecting unknown keys. A null or absent raw decodes as {}.
func decodeObject(raw json.RawMessage, what string, f fields) error {
	if isNull(raw) {
		return nil
	}
	var m map[string]json.RawMessage
	if raw[0] != '{' || json.Unmarshal(raw, &m) != nil {
		return invalidf("%s must be a JSON object", what)
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		dst, ok := f[k]
		if !ok {
			return invalidf("unknown field %q in %s; accepted fields: %s", k, what, strings.Join(slices.Sorted(maps.Keys(f)), ", "))
		}
		if err := dst.UnmarshalJSON(m[k]); err != nil {
			return invalidf("invalid %s field %q: %v", what, k, err)
		}
	}
	return nil
}

// optString is an optional, nullable JSON string.
type optString struct {
	Set, Null bool
	V         string
}

func (o *optString) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Null = true
		return nil
	}
	if err := json.Unmarshal(b, &o.V); err != nil {
		return errors.New("must be a string")
	}
	return nil
}

// value returns the string, "" when absent or null.
func (o optString) value() string { return o.V }

// maxSize is the largest size in GiB the API accepts (Cinder's column is
// a 32-bit integer).
const maxSize = math.MaxInt32

// optSize is an optional positive integer, sent as a JSON number or a
// string of digits (as Cinder accepts).
type optSize struct {
	Set, Null bool
	V         int64
}

func (o *optSize) UnmarshalJSON(b []byte) error {
	o.Set = true
	s := string(b)
	if s == "null" {
		o.Null = true
		return nil
	}
	if strings.HasPrefix(s, `"`) {
		if err := json.Unmarshal(b, &s); err != nil {
			return errors.New("must be a positive integer")
		}
	}
	if !digits(s) {
		return fmt.Errorf("must be a positive integer, not %s", truncate(string(b)))
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > maxSize {
		return fmt.Errorf("must be at most %d", maxSize)
	}
	if n < 1 {
		return errors.New("must be a positive integer, not 0")
	}
	o.V = n
	return nil
}

// optBool is an optional boolean: JSON true/false, or one of the strings
// Cinder accepts ("true", "False", "1", "no", ...).
type optBool struct {
	Set, Null bool
	V         bool
}

func (o *optBool) UnmarshalJSON(b []byte) error {
	o.Set = true
	switch string(b) {
	case "null":
		o.Null = true
		return nil
	case "true":
		o.V = true
		return nil
	case "false":
		return nil
	}
	var s string
	if json.Unmarshal(b, &s) == nil {
		if v, ok := parseBool(s); ok {
			o.V = v
			return nil
		}
	}
	return fmt.Errorf("must be a boolean, not %s", truncate(string(b)))
}

// parseBool accepts the boolean spellings of Cinder's API.
func parseBool(s string) (value, ok bool) {
	switch strings.ToLower(s) {
	case "true", "1", "yes", "y", "on", "t":
		return true, true
	case "false", "0", "no", "n", "off", "f":
		return false, true
	}
	return false, false
}

// Metadata limits, as Cinder's.
const maxMetaLen = 255

// optMeta is optional metadata: an object whose values are strings.
type optMeta struct {
	Set, Null bool
	V         map[string]string
}

func (o *optMeta) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Null = true
		return nil
	}
	var m map[string]json.RawMessage
	if len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &m) != nil {
		return errors.New("must be an object whose values are strings")
	}
	o.V = make(map[string]string, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		var v string
		if err := json.Unmarshal(m[k], &v); err != nil {
			return fmt.Errorf("the value of key %q must be a string", k)
		}
		if k == "" || utf8.RuneCountInString(k) > maxMetaLen {
			return fmt.Errorf("key %q must be 1 to %d characters long", truncate(k), maxMetaLen)
		}
		if utf8.RuneCountInString(v) > maxMetaLen {
			return fmt.Errorf("the value of key %q is longer than %d characters", k, maxMetaLen)
		}
		o.V[k] = v
	}
	return nil
}

// optObject is an optional JSON object of any content (a connector).
type optObject struct {
	Set, Null bool
	V         map[string]any
}

func (o *optObject) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Null = true
		return nil
	}
	if len(b) == 0 || b[0] != '{' || json.Unmarshal(b, &o.V) != nil {
		return errors.New("must be a JSON object")
	}
	return nil
}

// Text limits, as Cinder's.
const maxNameLen = 255

// checkLen rejects a name or description over maxNameLen characters.
func checkLen(what, field string, o optString) error {
	if n := utf8.RuneCountInString(o.V); n > maxNameLen {
		return invalidf("invalid %s field %q: must be at most %d characters, got %d", what, field, maxNameLen, n)
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// oneOfValues checks value against allowed, naming both when it fails.
func oneOfValues(field, value string, allowed []string) error {
	if slices.Contains(allowed, value) {
		return nil
	}
	return invalidf("invalid %s %q: must be one of %s", field, value, strings.Join(allowed, ", "))
}
