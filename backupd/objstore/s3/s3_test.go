package s3_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/s3/miniotest"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/storetest"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
	"github.com/bulkhead-io/bulkhead/internal/testenv"
)

func TestMain(m *testing.M) { miniotest.Main(m) }

func TestConformance(t *testing.T) {
	srv := miniotest.Shared(t)
	storetest.Run(t, func(t *testing.T) objstore.Store { return srv.Store(t) })
}

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	ca := newCA(t)
	if err := os.WriteFile(caFile, ca.certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok := s3.Config{Endpoint: "127.0.0.1:9000", AccessKey: "a", SecretKey: "secret", Bucket: "backups"}
	tests := []struct {
		name    string
		change  func(c *s3.Config)
		wantErr string // "" means valid
	}{
		{"valid", func(c *s3.Config) {}, ""},
		{"valid anonymous", func(c *s3.Config) { c.AccessKey, c.SecretKey = "", "" }, ""},
		{"valid tls", func(c *s3.Config) { c.UseTLS = true }, ""},
		{"valid tls with CA", func(c *s3.Config) { c.UseTLS, c.CAFile = true, caFile }, ""},
		{"valid tls insecure", func(c *s3.Config) { c.UseTLS, c.InsecureSkipVerify = true, true }, ""},
		{"no endpoint", func(c *s3.Config) { c.Endpoint = "" }, "endpoint is empty"},
		{"scheme", func(c *s3.Config) { c.Endpoint = "https://s3.example.com" }, "without a scheme"},
		{"path", func(c *s3.Config) { c.Endpoint = "s3.example.com/bucket" }, "without a path"},
		{"half credentials", func(c *s3.Config) { c.SecretKey = "" }, "both"},
		{"bad bucket", func(c *s3.Config) { c.Bucket = "Bad_Bucket" }, "bucket"},
		{"no bucket", func(c *s3.Config) { c.Bucket = "" }, "bucket"},
		{"CA without TLS", func(c *s3.Config) { c.CAFile = caFile }, "need UseTLS"},
		{"insecure without TLS", func(c *s3.Config) { c.InsecureSkipVerify = true }, "need UseTLS"},
		{"CA and insecure", func(c *s3.Config) { c.UseTLS, c.CAFile, c.InsecureSkipVerify = true, caFile, true }, "contradict"},
		{"missing CA file", func(c *s3.Config) { c.UseTLS, c.CAFile = true, filepath.Join(dir, "nope.pem") }, "CA file"},
		{"CA file without PEM", func(c *s3.Config) { c.UseTLS, c.CAFile = true, notPEM }, "no PEM certificate"},
		{"negative retries", func(c *s3.Config) { c.MaxRetries = -1 }, "MaxRetries"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.change(&cfg)
			err := cfg.Validate()
			_, newErr := s3.New(cfg)
			if tc.wantErr == "" {
				if err != nil || newErr != nil {
					t.Fatalf("Validate = %v, New = %v; want both nil", err, newErr)
				}
				return
			}
			for _, e := range []error{err, newErr} {
				if !errors.Is(e, errdefs.ErrInvalid) || !strings.Contains(e.Error(), tc.wantErr) {
					t.Errorf("error = %v; want ErrInvalid mentioning %q", e, tc.wantErr)
				}
			}
		})
	}
}

// TestTLS runs MinIO with a certificate from a private CA: the store works
// with CAFile, and with InsecureSkipVerify, and refuses the server without
// either.
func TestTLS(t *testing.T) {
	ca := newCA(t)
	certPEM, keyPEM := ca.issue(t, "127.0.0.1")
	srv := miniotest.Start(t, miniotest.Options{CertPEM: certPEM, KeyPEM: keyPEM})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, ca.certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	otherCA := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(otherCA, newCA(t).certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func(c *s3.Config)
		want   error // nil: works
	}{
		{"CAFile", func(c *s3.Config) { c.CAFile = caFile }, nil},
		{"InsecureSkipVerify", func(c *s3.Config) { c.InsecureSkipVerify = true }, nil},
		{"system roots", func(c *s3.Config) {}, errdefs.ErrUnavailable},
		{"another CA", func(c *s3.Config) { c.CAFile = otherCA }, errdefs.ErrUnavailable},
		// MinIO answers plain http on its https port with 400.
		{"plain http", func(c *s3.Config) { c.UseTLS = false }, errdefs.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := srv.Config(miniotest.BucketName(t))
			cfg.MaxRetries = 1
			tc.change(&cfg)
			st, err := s3.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = st.EnsureBucket(t.Context())
			if tc.want != nil {
				if !errors.Is(err, tc.want) {
					t.Fatalf("EnsureBucket = %v, want %v", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("EnsureBucket: %v", err)
			}
			if err := st.Put(t.Context(), "over/tls", strings.NewReader("secret"), 6); err != nil {
				t.Fatalf("Put: %v", err)
			}
			if size, err := st.Stat(t.Context(), "over/tls"); err != nil || size != 6 {
				t.Fatalf("Stat = %d, %v", size, err)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	cfg := s3.Config{
		Endpoint:   testenv.FreeAddr(t), // nothing listens there
		AccessKey:  miniotest.AccessKey,
		SecretKey:  miniotest.SecretKey,
		Bucket:     "nobody-home",
		MaxRetries: 2,
	}
	st, err := s3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	checks := map[string]error{
		"EnsureBucket": st.EnsureBucket(ctx),
		"Put":          st.Put(ctx, "k", strings.NewReader("x"), 1),
		"Delete":       st.Delete(ctx, "k"),
		"List":         st.List(ctx, "", func(string) error { return nil }),
	}
	_, checks["Stat"] = st.Stat(ctx, "k")
	_, checks["Get"] = st.Get(ctx, "k")
	for op, err := range checks {
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("%s = %v, want ErrUnavailable", op, err)
		}
	}
}

// TestServerKilled checks the kind of error while the server is down and
// that the store works again once it is back, with nothing lost.
func TestServerKilled(t *testing.T) {
	srv := miniotest.Start(t, miniotest.Options{})
	cfg := srv.Config("killed")
	cfg.MaxRetries = 2
	st, err := s3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := st.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "before", strings.NewReader("kept"), 4); err != nil {
		t.Fatal(err)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "during", strings.NewReader("lost"), 4); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Put while down = %v, want ErrUnavailable", err)
	}
	if _, err := st.Stat(ctx, "before"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Stat while down = %v, want ErrUnavailable", err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if size, err := st.Stat(ctx, "before"); err != nil || size != 4 {
		t.Errorf("Stat after restart = %d, %v; want 4, nil", size, err)
	}
	if _, err := st.Stat(ctx, "during"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stat(during) after restart = %v, want ErrNotFound", err)
	}
}

func TestCredentials(t *testing.T) {
	srv := miniotest.Shared(t)
	cfg := srv.Config(miniotest.BucketName(t))
	cfg.SecretKey = "wrong-secret-key"
	st, err := s3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(t.Context()); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("EnsureBucket with a wrong secret = %v, want ErrUnauthenticated", err)
	}
	cfg.AccessKey = "nosuchuser"
	st, err = s3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(t.Context(), "k", strings.NewReader("x"), 1); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("Put with an unknown access key = %v, want ErrUnauthenticated", err)
	}
}

func TestMissingBucket(t *testing.T) {
	st := miniotest.Shared(t).Store(t) // EnsureBucket not called
	ctx := t.Context()
	if _, err := st.Get(ctx, "k"); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "bucket") {
		t.Errorf("Get = %v, want ErrNotFound naming the bucket", err)
	}
	if err := st.Delete(ctx, "k"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Delete in a missing bucket = %v, want ErrNotFound (not a silent success)", err)
	}
	if err := st.List(ctx, "", func(string) error { return nil }); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("List = %v, want ErrNotFound", err)
	}
}

type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bulkhead test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) issue(t *testing.T, ip string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "minio"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.ParseIP(ip)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}
