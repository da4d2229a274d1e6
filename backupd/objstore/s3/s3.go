// Package s3 is the objstore.Store of backupd on any S3-compatible server
// (MinIO, Ceph RGW, AWS S3), built on minio-go. One Store is one bucket;
// New validates the Config and EnsureBucket creates the bucket if missing.
package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Config says where the bucket is and how to reach it.
type Config struct {
	// Endpoint is host:port of the S3 server, without a scheme
	// ("127.0.0.1:9000", "s3.example.com"). Required.
	Endpoint string
	// AccessKey and SecretKey are the credentials (for MinIO, its root
	// user or a user made for backupd). Both or neither; neither means
	// anonymous requests.
	AccessKey string
	SecretKey string
	// Region of the bucket. Empty lets the client ask the server once per
	// bucket (MinIO answers us-east-1 unless configured otherwise).
	Region string
	// Bucket holds every object of this store; it must be a valid S3
	// bucket name (3-63 characters, lower case, digits, '-', '.').
	Bucket string
	// UseTLS selects https.
	UseTLS bool
	// CAFile is a PEM bundle of the certificate authorities to trust for
	// the server's certificate, instead of the system's. Only with UseTLS.
	CAFile string
	// InsecureSkipVerify turns off verification of the server's
	// certificate. Never in production; only with UseTLS, and not together
	// with CAFile.
	InsecureSkipVerify bool
	// MaxRetries is how often the client tries a failed request in all
	// (minio-go retries connection failures, 5xx and throttling with a
	// backoff of at most 1 s between tries). Zero means minio-go's default
	// of 10; 1 means no retries.
	MaxRetries int
}

// Validate checks the configuration without contacting the server. Errors
// wrap errdefs.ErrInvalid.
func (c Config) Validate() error {
	_, err := c.tlsConfig()
	return err
}

func (c Config) tlsConfig() (*tls.Config, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("s3 config: "+format+": %w", append(args, errdefs.ErrInvalid)...)
	}
	switch {
	case c.Endpoint == "":
		return nil, invalid("endpoint is empty")
	case strings.Contains(c.Endpoint, "://"):
		return nil, invalid("endpoint %q must be host:port without a scheme; set UseTLS for https", c.Endpoint)
	case strings.ContainsAny(c.Endpoint, "/?# "):
		return nil, invalid("endpoint %q must be host:port, without a path", c.Endpoint)
	case (c.AccessKey == "") != (c.SecretKey == ""):
		return nil, invalid("give both the access key and the secret key, or neither")
	case c.MaxRetries < 0:
		return nil, invalid("MaxRetries is negative")
	}
	if err := s3utils.CheckValidBucketNameStrict(c.Bucket); err != nil {
		return nil, invalid("bucket %q: %v", c.Bucket, err)
	}
	if !c.UseTLS {
		if c.CAFile != "" || c.InsecureSkipVerify {
			return nil, invalid("CAFile and InsecureSkipVerify need UseTLS (the endpoint is plain http)")
		}
		return nil, nil
	}
	if c.CAFile != "" && c.InsecureSkipVerify {
		return nil, invalid("CAFile and InsecureSkipVerify contradict each other: a CA bundle is pointless when nothing is verified")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, invalid("CA file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, invalid("CA file %s holds no PEM certificate", c.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// Store is an objstore.Store on one S3 bucket.
type Store struct {
	client *minio.Client
	bucket string
	region string
	name   string
}

var _ objstore.Store = (*Store)(nil)

// New validates cfg and returns a store. It does not contact the server;
// call EnsureBucket to check the connection and create the bucket.
func New(cfg Config) (*Store, error) {
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	tr, err := minio.DefaultTransport(cfg.UseTLS)
	if err != nil {
		return nil, fmt.Errorf("s3: transport: %w", err)
	}
	if tlsCfg != nil {
		tr.TLSClientConfig = tlsCfg
	}
	var creds *credentials.Credentials
	if cfg.AccessKey != "" {
		creds = credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, "")
	} else {
		creds = credentials.NewStatic("", "", "", credentials.SignatureAnonymous)
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        creds,
		Secure:       cfg.UseTLS,
		Transport:    tr,
		Region:       cfg.Region,
		BucketLookup: minio.BucketLookupPath,
		MaxRetries:   cfg.MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 config: %v: %w", err, errdefs.ErrInvalid)
	}
	scheme := "s3"
	if cfg.UseTLS {
		scheme = "s3+tls"
	}
	return &Store{
		client: client,
		bucket: cfg.Bucket,
		region: cfg.Region,
		name:   scheme + "://" + cfg.Endpoint + "/" + cfg.Bucket,
	}, nil
}

// String implements objstore.Store.
func (s *Store) String() string { return s.name }

// EnsureBucket implements objstore.Store.
func (s *Store) EnsureBucket(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return s.classify("check bucket", "", err)
	}
	if ok {
		return nil
	}
	err = s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: s.region})
	if err != nil {
		var resp minio.ErrorResponse
		if errors.As(err, &resp) && (resp.Code == minio.BucketAlreadyOwnedByYou || resp.Code == "BucketAlreadyExists") {
			// Made by a concurrent EnsureBucket; BucketAlreadyExists can
			// also mean someone else owns it, which the next request shows.
			return nil
		}
		return s.classify("create bucket", "", err)
	}
	return nil
}

// Put implements objstore.Store. A reader that is an io.ReadSeeker (a
// *bytes.Reader, an *os.File) is checked against size up front and can be
// retried by the client; other readers are streamed once.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := s.check(ctx, "put", key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("%s: put %s: negative size %d: %w", s, key, size, errdefs.ErrInvalid)
	}
	body, err := uploadBody(r, size)
	if err != nil {
		return fmt.Errorf("%s: put %s: %w", s, key, err)
	}
	_, err = s.client.PutObject(ctx, s.bucket, key, body.reader(), size, minio.PutObjectOptions{
		ContentType:      "application/octet-stream",
		DisableMultipart: size <= maxSinglePut,
	})
	if err != nil {
		if rerr := body.err; rerr != nil {
			// The reader failed; the server is not to blame.
			return fmt.Errorf("%s: put %s: %w", s, key, rerr)
		}
		return s.classify("put", key, err)
	}
	return nil
}

// maxSinglePut is the largest object sent in one PUT request; larger ones
// go multipart. Blocks and manifests are far below it.
const maxSinglePut = 1 << 30

// uploadBody wraps r so that a wrong length is always caught and the
// reader's own errors can be told from the server's.
func uploadBody(r io.Reader, size int64) (*recordingReader, error) {
	if rs, ok := r.(io.ReadSeeker); ok {
		start, err := rs.Seek(0, io.SeekCurrent)
		if err != nil {
			return nil, err
		}
		end, err := rs.Seek(0, io.SeekEnd)
		if err != nil {
			return nil, err
		}
		if end-start != size {
			return nil, fmt.Errorf("reader has %d bytes, size says %d: %w", end-start, size, objstore.ErrSizeMismatch)
		}
		if _, err := rs.Seek(start, io.SeekStart); err != nil {
			return nil, err
		}
		return &recordingReader{r: rs, seeker: rs, start: start}, nil
	}
	return &recordingReader{r: objstore.ExactReader(r, size)}, nil
}

// recordingReader remembers the first error of the reader it wraps. It is
// an io.Seeker (so minio-go retries the request) exactly when the wrapped
// reader is; Seek positions are relative to where the reader started.
type recordingReader struct {
	r      io.Reader
	seeker io.Seeker
	start  int64
	err    error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// seekingReader is a recordingReader whose reader can seek.
type seekingReader struct{ *recordingReader }

func (r seekingReader) Seek(offset int64, whence int) (int64, error) {
	if whence == io.SeekStart {
		offset += r.start
	}
	pos, err := r.seeker.Seek(offset, whence)
	return pos - r.start, err
}

// reader returns r as an io.Reader that minio-go can retry when possible.
func (r *recordingReader) reader() io.Reader {
	if r.seeker != nil {
		return seekingReader{r}
	}
	return r
}

// Get implements objstore.Store.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := s.check(ctx, "get", key); err != nil {
		return nil, err
	}
	obj, err := s.client.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.classify("get", key, err)
	}
	// GetObject is lazy; Stat sends the GET, so a missing key shows here.
	if _, err := obj.Stat(); err != nil {
		obj.Close()
		return nil, s.classify("get", key, err)
	}
	return &objectReader{obj: obj, s: s, key: key}, nil
}

type objectReader struct {
	obj *minio.Object
	s   *Store
	key string
}

func (o *objectReader) Read(p []byte) (int, error) {
	n, err := o.obj.Read(p)
	if err != nil && err != io.EOF {
		err = o.s.classify("read", o.key, err)
	}
	return n, err
}

func (o *objectReader) Close() error { return o.obj.Close() }

// Stat implements objstore.Store.
func (s *Store) Stat(ctx context.Context, key string) (int64, error) {
	if err := s.check(ctx, "stat", key); err != nil {
		return 0, err
	}
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return 0, s.classify("stat", key, err)
	}
	return info.Size, nil
}

// Delete implements objstore.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.check(ctx, "delete", key); err != nil {
		return err
	}
	err := s.client.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{})
	if err != nil {
		err = s.classify("delete", key, err)
		if errors.Is(err, errdefs.ErrNotFound) && !isNoSuchBucket(err) {
			return nil
		}
		return err
	}
	return nil
}

// List implements objstore.Store.
func (s *Store) List(ctx context.Context, prefix string, fn func(key string) error) error {
	if err := objstore.ValidPrefix(prefix); err != nil {
		return fmt.Errorf("%s: list: %w", s, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: list %s: %w", s, prefix, err)
	}
	// Canceling lctx stops minio-go's listing goroutine when fn fails.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for info := range s.client.ListObjects(lctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if info.Err != nil {
			return s.classify("list", prefix, info.Err)
		}
		if err := fn(info.Key); err != nil {
			return err
		}
	}
	// A canceled listing may just end the channel.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: list %s: %w", s, prefix, err)
	}
	return nil
}

func (s *Store) check(ctx context.Context, op, key string) error {
	if err := objstore.ValidKey(key); err != nil {
		return fmt.Errorf("%s: %s: %w", s, op, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %s %s: %w", s, op, key, err)
	}
	return nil
}

type noSuchBucketError struct{ error }

func (e noSuchBucketError) Unwrap() error { return e.error }

func isNoSuchBucket(err error) bool {
	var nsb noSuchBucketError
	return errors.As(err, &nsb)
}

// classify turns a minio-go error into one wrapping an errdefs kind.
// This is the one place that knows how S3 errors map to kinds.
func (s *Store) classify(op, key string, err error) error {
	where := s.String() + ": " + op
	if key != "" {
		where += " " + key
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", where, err)
	}
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) || resp.Code == "" && resp.StatusCode == 0 {
		if errors.Is(err, errdefs.ErrInvalid) {
			return fmt.Errorf("%s: %w", where, err)
		}
		// Connection refused or reset, timeouts, TLS handshake and
		// certificate failures, a body cut short, minio-go's "is offline".
		return fmt.Errorf("%s: server unreachable: %v: %w", where, err, errdefs.ErrUnavailable)
	}
	msg := resp.Code
	if resp.Message != "" {
		msg += ": " + resp.Message
	}
	switch {
	case resp.Code == minio.NoSuchKey:
		return fmt.Errorf("%s: %s: %w", where, msg, errdefs.ErrNotFound)
	case resp.Code == minio.NoSuchBucket:
		return noSuchBucketError{fmt.Errorf("%s: bucket %s does not exist: %w", where, s.bucket, errdefs.ErrNotFound)}
	case resp.Code == minio.InvalidAccessKeyID || resp.Code == "SignatureDoesNotMatch" ||
		resp.Code == "ExpiredToken" || resp.Code == "InvalidToken":
		return fmt.Errorf("%s: credentials refused: %s: %w", where, msg, errdefs.ErrUnauthenticated)
	case resp.Code == minio.AccessDenied || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%s: %s: %w", where, msg, errdefs.ErrForbidden)
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests ||
		resp.Code == "SlowDown" || resp.Code == "RequestTimeout" || strings.HasPrefix(resp.Code, "XMinioServerNotInitialized"):
		return fmt.Errorf("%s: server failed: %s: %w", where, msg, errdefs.ErrUnavailable)
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%s: %s: %w", where, msg, errdefs.ErrNotFound)
	case resp.StatusCode == http.StatusBadRequest || resp.Code == minio.InvalidArgument ||
		resp.Code == minio.InvalidBucketName || resp.Code == minio.EntityTooLarge:
		return fmt.Errorf("%s: %s: %w", where, msg, errdefs.ErrInvalid)
	}
	return fmt.Errorf("%s: %s (HTTP %d)", where, msg, resp.StatusCode)
}
