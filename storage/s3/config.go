package s3

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// URLHelp documents the s3:// destination for --help.
const URLHelp = `s3://BUCKET[/PREFIX][?PARAM=VALUE&...]   an S3 bucket (AWS or compatible)
  endpoint=https://host:port  S3 server (default AWS; or $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL)
  region=NAME  path_style=auto|true|false  ca_bundle=/path/to/ca.pem
  storage_class=STANDARD_IA...  part_size=16MiB (min 5MiB)  parts_in_flight=4
  Keys: $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY, $AWS_SESSION_TOKEN (or NAME_FILE),
  else ~/.aws/credentials ($AWS_SHARED_CREDENTIALS_FILE, $AWS_PROFILE), else the instance role.`

const (
	defaultPartSize = 16 << 20
	minPartSize     = 5 << 20 // S3's floor for every part but the last
	maxPartSize     = 5 << 30 // S3's ceiling for one part
	defaultInFlight = 4
	maxInFlight     = 64
	awsEndpoint     = "s3.amazonaws.com"
)

// params are the query parameters an s3:// URL may carry, sorted for the
// error that lists them.
var params = []string{"ca_bundle", "endpoint", "part_size", "parts_in_flight", "path_style", "region", "storage_class"}

type config struct {
	bucket, prefix string
	host           string // host[:port] of the endpoint
	secure         bool
	custom         bool // endpoint given, not AWS
	region         string
	lookup         minio.BucketLookupType
	caBundle       string
	storageClass   string
	partSize       int64
	inFlight       int

	accessKey, secretKey, sessionToken string
	credFile, profile                  string // shared credentials, when no keys in the environment
}

// endpointURL is the endpoint as people write it, for messages.
func (c *config) endpointURL() string {
	if c.secure {
		return "https://" + c.host
	}
	return "http://" + c.host
}

func (c *config) secrets() []string {
	return []string{c.secretKey, c.sessionToken, c.accessKey}
}

func parseConfig(u *url.URL, getenv func(string) string) (*config, error) {
	if u.Scheme != "s3" {
		return nil, fmt.Errorf("not an s3:// URL: scheme %q", u.Scheme)
	}
	// Never echo u: it may hold a password.
	if u.User != nil {
		return nil, errors.New("s3:// URL: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	if u.Opaque != "" || u.Host == "" {
		return nil, errors.New("s3:// URL has no bucket: write s3://BUCKET/PREFIX")
	}
	if u.Port() != "" {
		return nil, fmt.Errorf("s3://%s: a bucket has no port; give the server with ?endpoint=http://host:port", u.Host)
	}
	if u.Fragment != "" {
		return nil, fmt.Errorf("s3://%s: unexpected #%s", u.Host, u.Fragment)
	}
	c := &config{bucket: u.Host, partSize: defaultPartSize, inFlight: defaultInFlight}
	if err := s3utils.CheckValidBucketName(c.bucket); err != nil {
		return nil, fmt.Errorf("s3://%s: invalid bucket name: %v", c.bucket, err)
	}
	c.prefix = strings.Trim(u.Path, "/")
	if c.prefix != "" {
		if path.Clean(c.prefix) != c.prefix || strings.HasPrefix(c.prefix, "../") || c.prefix == ".." || c.prefix == "." {
			return nil, fmt.Errorf("s3://%s/%s: the prefix must be a plain path, without empty, . or .. parts", c.bucket, c.prefix)
		}
	}

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("s3://%s: bad query: %v", c.bucket, err)
	}
	var unknown []string
	for k, v := range q {
		i := sort.SearchStrings(params, k)
		if i == len(params) || params[i] != k {
			unknown = append(unknown, k)
		} else if len(v) > 1 {
			return nil, fmt.Errorf("s3://%s: %s given %d times", c.bucket, k, len(v))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("s3://%s: unknown parameter %s; valid ones are %s", c.bucket, strings.Join(unknown, ", "), strings.Join(params, ", "))
	}

	env := func(name string) (string, error) { return envOrFile(getenv, name) }

	endpoint, from := q.Get("endpoint"), "endpoint="
	for _, name := range []string{"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"} {
		v, err := env(name)
		if err != nil {
			return nil, err
		}
		if endpoint == "" && v != "" {
			endpoint, from = v, name
		}
	}
	if endpoint == "" {
		c.host, c.secure = awsEndpoint, true
	} else {
		if c.host, c.secure, err = parseEndpoint(endpoint); err != nil {
			return nil, fmt.Errorf("%s: %v", from, err)
		}
		c.custom = true
	}

	c.region = q.Get("region")
	for _, name := range []string{"AWS_REGION", "AWS_DEFAULT_REGION"} {
		v, err := env(name)
		if err != nil {
			return nil, err
		}
		if c.region == "" {
			c.region = v
		}
	}

	switch ps := q.Get("path_style"); ps {
	case "", "auto":
		c.lookup = minio.BucketLookupAuto
		if !c.custom {
			c.lookup = minio.BucketLookupDNS
		} else if h := hostOnly(c.host); h == "localhost" || net.ParseIP(h) != nil {
			// Virtual hosts need DNS names; an address can only carry the
			// bucket in the path.
			c.lookup = minio.BucketLookupPath
		}
	case "true":
		c.lookup = minio.BucketLookupPath
	case "false":
		c.lookup = minio.BucketLookupDNS
	default:
		return nil, fmt.Errorf("path_style=%s: want auto, true or false", ps)
	}

	if c.caBundle = q.Get("ca_bundle"); c.caBundle != "" && !c.secure {
		return nil, fmt.Errorf("ca_bundle=%s is for TLS, but the endpoint %s is plain http", c.caBundle, c.endpointURL())
	}
	c.storageClass = q.Get("storage_class")

	if v := q.Get("part_size"); v != "" {
		if c.partSize, err = parseSize(v); err != nil {
			return nil, fmt.Errorf("part_size=%s: %v", v, err)
		}
		if c.partSize < minPartSize || c.partSize > maxPartSize {
			return nil, fmt.Errorf("part_size=%s: must be between 5MiB and 5GiB, the limits of S3", v)
		}
	}
	if v := q.Get("parts_in_flight"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxInFlight {
			return nil, fmt.Errorf("parts_in_flight=%s: want a number from 1 to %d", v, maxInFlight)
		}
		c.inFlight = n
	}

	if err := c.readCredentials(getenv); err != nil {
		return nil, err
	}
	return c, nil
}

// readCredentials takes keys from the environment; without them the
// shared credentials file and then the instance role are tried, when
// connecting.
func (c *config) readCredentials(getenv func(string) string) error {
	var err error
	if c.accessKey, err = envOrFile(getenv, "AWS_ACCESS_KEY_ID"); err != nil {
		return err
	}
	if c.secretKey, err = envOrFile(getenv, "AWS_SECRET_ACCESS_KEY"); err != nil {
		return err
	}
	if c.sessionToken, err = envOrFile(getenv, "AWS_SESSION_TOKEN"); err != nil {
		return err
	}
	switch {
	case c.accessKey != "" && c.secretKey == "":
		return errors.New("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or neither to use ~/.aws/credentials or the instance role")
	case c.accessKey == "" && c.secretKey != "":
		return errors.New("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not: set both, or neither to use ~/.aws/credentials or the instance role")
	case c.accessKey == "" && c.sessionToken != "":
		return errors.New("AWS_SESSION_TOKEN is set without AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set all three")
	}
	c.credFile = getenv("AWS_SHARED_CREDENTIALS_FILE")
	if c.credFile == "" {
		home := getenv("HOME")
		if home == "" {
			home, _ = os.UserHomeDir()
		}
		if home != "" {
			c.credFile = filepath.Join(home, ".aws", "credentials")
		}
	}
	if c.profile = getenv("AWS_PROFILE"); c.profile == "" {
		c.profile = "default"
	}
	return nil
}

// envOrFile reads NAME, or the file NAME_FILE names (as Docker secrets
// are given), trimmed. The value is never put in an error.
func envOrFile(getenv func(string) string, name string) (string, error) {
	v, file := getenv(name), getenv(name+"_FILE")
	switch {
	case v != "" && file != "":
		return "", fmt.Errorf("both %s and %s_FILE are set: set only one", name, name)
	case file == "":
		return strings.TrimSpace(v), nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s_FILE: %w", name, err)
	}
	v = strings.TrimSpace(string(data))
	if v == "" {
		return "", fmt.Errorf("%s_FILE: %s is empty", name, file)
	}
	return v, nil
}

// parseEndpoint takes http(s)://host[:port] or a bare host[:port], which
// means https.
func parseEndpoint(s string) (host string, secure bool, err error) {
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		// url.Parse's error quotes the input, which may hold a password.
		return "", false, errors.New("the endpoint is not a valid URL: want http(s)://host[:port]")
	}
	switch u.Scheme {
	case "https":
		secure = true
	case "http":
	default:
		return "", false, fmt.Errorf("endpoint scheme %q: want http:// or https://", u.Scheme)
	}
	if u.User != nil {
		return "", false, errors.New("endpoint: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	}
	if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		// Not the path: in "http:///AK:secret@h" it holds the password
		// (FuzzParseConfig).
		return "", false, fmt.Errorf("endpoint %s://%s…: want only scheme://host[:port], nothing after it", u.Scheme, u.Host)
	}
	return u.Host, secure, nil
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// parseSize reads bytes, or a number with KiB, MiB or GiB.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}}
	num, mult := s, int64(1)
	for _, u := range units {
		if strings.HasSuffix(strings.ToLower(s), strings.ToLower(u.suffix)) {
			num, mult = strings.TrimSpace(s[:len(s)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, errors.New("want a size like 16MiB, 1GiB or a number of bytes")
	}
	return n * mult, nil
}
