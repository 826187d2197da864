package s3

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
)

func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyFile := write("key", "  AKIDFROMFILE\n")
	endpointFile := write("endpoint", "http://10.0.0.9:9000\n")
	emptyFile := write("empty", "\n")

	tests := []struct {
		name    string
		url     string
		env     map[string]string
		wantErr string // substring; empty: must succeed
		check   func(t *testing.T, c *config)
	}{
		{name: "aws default", url: "s3://bucket/some/prefix/", check: func(t *testing.T, c *config) {
			want := config{bucket: "bucket", prefix: "some/prefix", host: "s3.amazonaws.com", secure: true, lookup: minio.BucketLookupDNS, partSize: 16 << 20, inFlight: 4}
			if c.bucket != want.bucket || c.prefix != want.prefix || c.host != want.host || !c.secure || c.custom || c.lookup != want.lookup || c.partSize != want.partSize || c.inFlight != want.inFlight {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "no prefix", url: "s3://bucket", check: func(t *testing.T, c *config) {
			if c.prefix != "" {
				t.Errorf("prefix %q", c.prefix)
			}
		}},
		{name: "url endpoint beats env", url: "s3://bkt?endpoint=https://c.example:3",
			env: map[string]string{"AWS_ENDPOINT_URL_S3": "http://b:2", "AWS_ENDPOINT_URL": "http://a:1"},
			check: func(t *testing.T, c *config) {
				if c.host != "c.example:3" || !c.secure || !c.custom || c.lookup != minio.BucketLookupAuto {
					t.Errorf("got %+v", c)
				}
			}},
		{name: "AWS_ENDPOINT_URL_S3 beats AWS_ENDPOINT_URL", url: "s3://bkt",
			env: map[string]string{"AWS_ENDPOINT_URL_S3": "http://b:2", "AWS_ENDPOINT_URL": "http://a:1"},
			check: func(t *testing.T, c *config) {
				if c.host != "b:2" || c.secure {
					t.Errorf("got %+v", c)
				}
			}},
		{name: "AWS_ENDPOINT_URL", url: "s3://bkt", env: map[string]string{"AWS_ENDPOINT_URL": "http://a:1"},
			check: func(t *testing.T, c *config) {
				if c.host != "a:1" || c.secure {
					t.Errorf("got %+v", c)
				}
			}},
		{name: "endpoint from file, IP means path style", url: "s3://bkt", env: map[string]string{"AWS_ENDPOINT_URL_FILE": endpointFile},
			check: func(t *testing.T, c *config) {
				if c.host != "10.0.0.9:9000" || c.secure || c.lookup != minio.BucketLookupPath {
					t.Errorf("got %+v", c)
				}
			}},
		{name: "bare host:port is https", url: "s3://bkt?endpoint=minio.example.com:9000", check: func(t *testing.T, c *config) {
			if c.host != "minio.example.com:9000" || !c.secure || c.lookup != minio.BucketLookupAuto {
				t.Errorf("got %+v", c)
			}
		}},
		{name: "localhost means path style", url: "s3://bkt?endpoint=http://localhost:9000", check: func(t *testing.T, c *config) {
			if c.lookup != minio.BucketLookupPath {
				t.Errorf("lookup %v", c.lookup)
			}
		}},
		{name: "path_style=false wins", url: "s3://bkt?endpoint=http://127.0.0.1:9000&path_style=false", check: func(t *testing.T, c *config) {
			if c.lookup != minio.BucketLookupDNS {
				t.Errorf("lookup %v", c.lookup)
			}
		}},
		{name: "path_style=true", url: "s3://bkt?path_style=true", check: func(t *testing.T, c *config) {
			if c.lookup != minio.BucketLookupPath {
				t.Errorf("lookup %v", c.lookup)
			}
		}},
		{name: "bad path_style", url: "s3://bkt?path_style=maybe", wantErr: "path_style=maybe"},
		{name: "endpoint with a path", url: "s3://bkt?endpoint=http://h:1/x", wantErr: "want only scheme://host"},
		{name: "endpoint ftp", url: "s3://bkt?endpoint=ftp://h:1", wantErr: "want http:// or https://"},
		{name: "region order", url: "s3://bkt", env: map[string]string{"AWS_REGION": "eu-west-3", "AWS_DEFAULT_REGION": "us-west-2"},
			check: func(t *testing.T, c *config) {
				if c.region != "eu-west-3" {
					t.Errorf("region %q", c.region)
				}
			}},
		{name: "default region", url: "s3://bkt", env: map[string]string{"AWS_DEFAULT_REGION": "us-west-2"},
			check: func(t *testing.T, c *config) {
				if c.region != "us-west-2" {
					t.Errorf("region %q", c.region)
				}
			}},
		{name: "url region wins", url: "s3://bkt?region=ap-south-1", env: map[string]string{"AWS_REGION": "eu-west-3"},
			check: func(t *testing.T, c *config) {
				if c.region != "ap-south-1" {
					t.Errorf("region %q", c.region)
				}
			}},
		{name: "keys from env and file", url: "s3://bkt",
			env: map[string]string{"AWS_ACCESS_KEY_ID_FILE": keyFile, "AWS_SECRET_ACCESS_KEY": "sekrit", "AWS_SESSION_TOKEN": "tok"},
			check: func(t *testing.T, c *config) {
				if c.accessKey != "AKIDFROMFILE" || c.secretKey != "sekrit" || c.sessionToken != "tok" {
					t.Errorf("got %q %q %q", c.accessKey, c.secretKey, c.sessionToken)
				}
			}},
		{name: "shared file and profile", url: "s3://bkt",
			env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": "/x/creds", "AWS_PROFILE": "backup"},
			check: func(t *testing.T, c *config) {
				if c.accessKey != "" || c.credFile != "/x/creds" || c.profile != "backup" {
					t.Errorf("got %+v", c)
				}
			}},
		{name: "default shared file", url: "s3://bkt", env: map[string]string{"HOME": "/home/u"},
			check: func(t *testing.T, c *config) {
				if c.credFile != "/home/u/.aws/credentials" || c.profile != "default" {
					t.Errorf("got %q %q", c.credFile, c.profile)
				}
			}},
		{name: "name and _FILE both set", url: "s3://bkt", env: map[string]string{"AWS_SECRET_ACCESS_KEY": "x", "AWS_SECRET_ACCESS_KEY_FILE": keyFile},
			wantErr: "both AWS_SECRET_ACCESS_KEY and AWS_SECRET_ACCESS_KEY_FILE are set"},
		{name: "endpoint and _FILE both set", url: "s3://bkt", env: map[string]string{"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_FILE": endpointFile},
			wantErr: "both AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_FILE"},
		{name: "missing _FILE", url: "s3://bkt", env: map[string]string{"AWS_ACCESS_KEY_ID_FILE": filepath.Join(dir, "nope")},
			wantErr: "AWS_ACCESS_KEY_ID_FILE"},
		{name: "empty _FILE", url: "s3://bkt", env: map[string]string{"AWS_ACCESS_KEY_ID_FILE": emptyFile},
			wantErr: "is empty"},
		{name: "key without secret", url: "s3://bkt", env: map[string]string{"AWS_ACCESS_KEY_ID": "AKID"},
			wantErr: "AWS_SECRET_ACCESS_KEY is not"},
		{name: "secret without key", url: "s3://bkt", env: map[string]string{"AWS_SECRET_ACCESS_KEY": "s"},
			wantErr: "AWS_ACCESS_KEY_ID is not"},
		{name: "unknown parameter", url: "s3://bkt?part_size=5MiB&colour=blue", wantErr: "unknown parameter colour; valid ones are ca_bundle, endpoint, part_size, parts_in_flight, path_style, region, storage_class"},
		{name: "repeated parameter", url: "s3://bkt?region=a&region=b", wantErr: "region given 2 times"},
		{name: "part size MiB", url: "s3://bkt?part_size=5MiB", check: wantPartSize(5 << 20)},
		{name: "part size GiB", url: "s3://bkt?part_size=1GiB", check: wantPartSize(1 << 30)},
		{name: "part size KiB", url: "s3://bkt?part_size=8192KiB", check: wantPartSize(8 << 20)},
		{name: "part size bytes", url: "s3://bkt?part_size=8388608", check: wantPartSize(8 << 20)},
		{name: "part size any case", url: "s3://bkt?part_size=32mib", check: wantPartSize(32 << 20)},
		{name: "part size too small", url: "s3://bkt?part_size=4MiB", wantErr: "between 5MiB and 5GiB"},
		{name: "part size too big", url: "s3://bkt?part_size=6GiB", wantErr: "between 5MiB and 5GiB"},
		{name: "part size garbage", url: "s3://bkt?part_size=lots", wantErr: "want a size like 16MiB"},
		{name: "part size negative", url: "s3://bkt?part_size=-5MiB", wantErr: "want a size"},
		{name: "parts in flight", url: "s3://bkt?parts_in_flight=8", check: func(t *testing.T, c *config) {
			if c.inFlight != 8 {
				t.Errorf("inFlight %d", c.inFlight)
			}
		}},
		{name: "parts in flight zero", url: "s3://bkt?parts_in_flight=0", wantErr: "parts_in_flight=0"},
		{name: "storage class", url: "s3://bkt?storage_class=STANDARD_IA", check: func(t *testing.T, c *config) {
			if c.storageClass != "STANDARD_IA" {
				t.Errorf("storage class %q", c.storageClass)
			}
		}},
		{name: "ca bundle on http", url: "s3://bkt?endpoint=http://h:1&ca_bundle=/x.pem", wantErr: "plain http"},
		{name: "double slash in prefix", url: "s3://bkt/a//c", wantErr: "plain path"},
		{name: "dot dot in prefix", url: "s3://bkt/a/../c", wantErr: "plain path"},
		{name: "bad bucket", url: "s3://ab", wantErr: "invalid bucket name"},
		{name: "port on bucket", url: "s3://b:9000/x", wantErr: "endpoint="},
		{name: "no bucket", url: "s3:///x", wantErr: "no bucket"},
		{name: "password in url", url: "s3://AKID:hunter2hunter2@bkt/x", wantErr: "do not belong in the URL"},
		{name: "password in endpoint", url: "s3://bkt?endpoint=http://u:hunter2hunter2@h:1", wantErr: "do not belong in the URL"},
		{name: "wrong scheme", url: "sftp://b/x", wantErr: "not an s3:// URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			env := tt.env
			if env == nil {
				env = map[string]string{}
			}
			c, err := parseConfig(u, func(k string) string { return env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tt.wantErr)
				}
				for _, secret := range []string{"hunter2hunter2", "sekrit", "AKIDFROMFILE"} {
					if strings.Contains(err.Error(), secret) {
						t.Fatalf("error shows a secret: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func wantPartSize(n int64) func(*testing.T, *config) {
	return func(t *testing.T, c *config) {
		if c.partSize != n {
			t.Errorf("part size %d, want %d", c.partSize, n)
		}
	}
}

func TestStringAWS(t *testing.T) {
	u, _ := url.Parse("s3://bucket/pre/fix?region=eu-west-1")
	env := map[string]string{"AWS_ACCESS_KEY_ID": "AKIDSTRINGTEST", "AWS_SECRET_ACCESS_KEY": "secret-string-test"}
	cfg, err := parseConfig(u, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	s, err := newStore(cfg, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.String(); got != "s3://bucket/pre/fix" {
		t.Fatalf("String() = %q", got)
	}
	if got := s.object("vol/a.json"); got != "pre/fix/vol/a.json" {
		t.Fatalf("object name %q", got)
	}
}

func TestURLHelpFits(t *testing.T) {
	for _, p := range params {
		if !strings.Contains(URLHelp, p+"=") {
			t.Errorf("URLHelp does not mention %s", p)
		}
	}
	for _, line := range strings.Split(URLHelp, "\n") {
		if len(line) > 100 {
			t.Errorf("URLHelp line too long for --help: %q", line)
		}
	}
}
