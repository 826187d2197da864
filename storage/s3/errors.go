package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
)

// explain turns what minio-go returns into a message that says what to do,
// wrapping err, with any credential scrubbed from the text.
func (s *Store) explain(op string, err error) error {
	e := s.explainRaw(op, err)
	if x, ok := e.(*explained); ok && op != "open" && !strings.HasPrefix(x.msg, "s3 "+op) {
		x.msg = op + ": " + x.msg
	}
	return redact(e, s.cfg.secrets())
}

func (s *Store) explainRaw(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("s3 %s: %w", op, err)
	}
	ep := s.cfg.endpointURL()
	resp := errResp(err)
	switch resp.Code {
	case minio.NoSuchBucket:
		return s.noBucket(err)
	case minio.InvalidAccessKeyID, minio.SignatureDoesNotMatch, "InvalidToken", "ExpiredToken", "TokenRefreshRequired", "InvalidSecurity",
		"XAdminUserNotFound": // versitygw's InvalidAccessKeyId
		return &explained{fmt.Sprintf("S3 at %s refused the credentials (%s) for bucket %s: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY%s",
			ep, resp.Code, s.cfg.bucket, s.tokenHint()), err}
	case minio.AccessDenied, "AllAccessDisabled":
		if s.anonymous() {
			return &explained{fmt.Sprintf("S3 at %s denied access to bucket %s (%s) and no credentials were found: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or provide ~/.aws/credentials or an instance role",
				ep, s.cfg.bucket, resp.Code), err}
		}
		return &explained{fmt.Sprintf("S3 at %s refused the credentials for %s on bucket %s (%s): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY%s, and that their policy allows listing, reading and writing the bucket",
			ep, op, s.cfg.bucket, resp.Code, s.tokenHint()), err}
	case "AuthorizationHeaderMalformed", "InvalidRegion", "IllegalLocationConstraintException", "PermanentRedirect":
		return &explained{fmt.Sprintf("S3 at %s: bucket %s is in another region (%s%s): set region= in the URL or AWS_REGION",
			ep, s.cfg.bucket, resp.Code, regionHint(resp.Region)), err}
	}
	if resp.StatusCode == http.StatusForbidden {
		return &explained{fmt.Sprintf("S3 at %s refused %s on bucket %s (%s): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY%s, and that their policy allows it",
			ep, op, s.cfg.bucket, resp.Code, s.tokenHint()), err}
	}
	var uaErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var certErr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return &explained{fmt.Sprintf("cannot reach S3 at %s: connection refused: check endpoint= / AWS_ENDPOINT_URL and that the server is running", ep), err}
	case errors.As(err, &dnsErr):
		return &explained{fmt.Sprintf("cannot reach S3 at %s: cannot resolve %s: check endpoint= / AWS_ENDPOINT_URL and DNS", ep, dnsErr.Name), err}
	// Hostname first: a certificate for another name fails verification
	// too (a CertificateVerificationError wraps the HostnameError), and
	// no CA in ca_bundle can fix that.
	case errors.As(err, &hostErr):
		return &explained{fmt.Sprintf("S3 at %s presents a TLS certificate for %s, not for %s, the host in the endpoint: name the server as its certificate does in endpoint= / AWS_ENDPOINT_URL (%s)",
			ep, certNames(hostErr.Certificate), hostErr.Host, s.renamed(hostErr.Certificate)), err}
	case errors.As(err, &uaErr), errors.As(err, &certErr):
		return &explained{fmt.Sprintf("S3 at %s has a TLS certificate this host does not trust: add its CA with ca_bundle=/path/to/ca.pem", ep), err}
	case errors.As(err, &recErr):
		return &explained{fmt.Sprintf("S3 at %s does not speak TLS: use endpoint=http://%s if it is plain http", ep, s.cfg.host), err}
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"): // net/http exports no type for it
		return &explained{fmt.Sprintf("S3 at %s does not speak TLS: use endpoint=http://%s if it is plain http", ep, s.cfg.host), err}
	case !s.cfg.secure && (answeredTLS(err, resp) || op == "open" && closedAtOnce(err) && speaksTLS(s.cfg.host)):
		return &explained{fmt.Sprintf("S3 at %s speaks TLS, not plain http: use endpoint=https://%s", ep, s.cfg.host), err}
	case isTimeout(err):
		return &explained{fmt.Sprintf("S3 at %s did not answer in time during %s: check endpoint= and the network", ep, op), err}
	}
	if resp.Code != "" {
		return &explained{fmt.Sprintf("s3 %s on %s: %s (%s)", op, s.cfg.endpointURL()+"/"+s.cfg.bucket, resp.Message, resp.Code), err}
	}
	return fmt.Errorf("s3 %s at %s: %w", op, ep, err)
}

// answeredTLS tells a TLS server's answer to plain http: a TLS record
// (an alert, 0x15 0x03, or a handshake, 0x16 0x03) where an HTTP status
// line was expected, or the 400 that Go's and nginx's TLS servers send.
func answeredTLS(err error, resp minio.ErrorResponse) bool {
	msg := err.Error()
	if strings.Contains(msg, `malformed HTTP response "\x15\x03`) || strings.Contains(msg, `malformed HTTP response "\x16\x03`) {
		return true
	}
	return resp.StatusCode == http.StatusBadRequest &&
		(strings.Contains(resp.Message, "HTTP request to an HTTPS server") || strings.Contains(resp.Message, "plain HTTP request was sent to HTTPS port"))
}

// closedAtOnce tells a connection closed without an answer, which is all
// some TLS servers (Go's crypto/tls, versitygw's) give a plain http
// request; minio-go rewrites the EOF into its own text.
func closedAtOnce(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		strings.Contains(err.Error(), "Connection closed by foreign host")
}

// speaksTLS asks host for a TLS handshake, to tell a TLS server that
// hangs up on plain http from a server that is merely broken. Nothing is
// sent but a ClientHello, and the certificate does not matter here.
func speaksTLS(host string) bool {
	conn, err := net.DialTimeout("tcp", host, 3*time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, ServerName: hostOnly(host)})
	err = tc.Handshake()
	var alert tls.AlertError
	return err == nil || errors.As(err, &alert)
}

// certNames lists the names a certificate is valid for.
func certNames(c *x509.Certificate) string {
	var names []string
	names = append(names, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		if c.Subject.CommonName != "" {
			return fmt.Sprintf("no name at all (only the common name %s, which TLS clients no longer accept: the certificate needs a subjectAltName)", c.Subject.CommonName)
		}
		return "no name at all"
	}
	return strings.Join(names, ", ")
}

// renamed is the endpoint under the certificate's first name, as an
// example of what to write.
func (s *Store) renamed(c *x509.Certificate) string {
	name := ""
	switch {
	case len(c.DNSNames) > 0:
		name = strings.TrimPrefix(c.DNSNames[0], "*.")
	case len(c.IPAddresses) > 0:
		name = c.IPAddresses[0].String()
	default:
		return "or give the server a certificate with its name"
	}
	if _, port, err := net.SplitHostPort(s.cfg.host); err == nil {
		name = net.JoinHostPort(name, port)
	}
	return "such as https://" + name + ", where that name reaches this server"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func regionHint(r string) string {
	if r == "" {
		return ""
	}
	return ", it says " + r
}

func (s *Store) tokenHint() string {
	if s.cfg.sessionToken != "" {
		return " / AWS_SESSION_TOKEN (is it expired?)"
	}
	return ""
}

// anonymous tells whether requests went unsigned, every source of
// credentials having come up empty.
func (s *Store) anonymous() bool {
	if s.cfg.accessKey != "" {
		return false
	}
	v, err := s.creds.Get()
	return err != nil || v.SignerType.IsAnonymous()
}

func (s *Store) noBucket(err error) error {
	return &explained{fmt.Sprintf("bucket %s does not exist at %s; create it first", s.cfg.bucket, s.cfg.endpointURL()), err}
}

// explained is a message for people that still unwraps to the cause.
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

// redacted hides credentials in the text of an error a server or a library
// wrote, should any echo them, and keeps errors.Is working.
type redacted struct {
	msg string
	err error
}

func (e *redacted) Error() string { return e.msg }
func (e *redacted) Unwrap() error { return e.err }

func redact(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	clean := msg
	for _, sec := range secrets {
		if len(sec) >= 3 {
			clean = strings.ReplaceAll(clean, sec, "***")
		}
	}
	if clean == msg {
		return err
	}
	return &redacted{clean, err}
}

// errResp finds the S3 error in err, through any wrapping (minio-go's
// ToErrorResponse looks only at err itself).
func errResp(err error) minio.ErrorResponse {
	var r minio.ErrorResponse
	if errors.As(err, &r) {
		return r
	}
	return minio.ErrorResponse{}
}
