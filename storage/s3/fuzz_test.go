package s3

import (
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// urlOf prints a config as the s3:// URL that says all of it.
func urlOf(c *config) string {
	q := url.Values{}
	if c.custom {
		q.Set("endpoint", c.endpointURL())
	}
	if c.region != "" {
		q.Set("region", c.region)
	}
	switch c.lookup {
	case minio.BucketLookupPath:
		q.Set("path_style", "true")
	case minio.BucketLookupDNS:
		q.Set("path_style", "false")
	}
	if c.caBundle != "" {
		q.Set("ca_bundle", c.caBundle)
	}
	if c.storageClass != "" {
		q.Set("storage_class", c.storageClass)
	}
	q.Set("part_size", strconv.FormatInt(c.partSize, 10))
	q.Set("parts_in_flight", strconv.Itoa(c.inFlight))
	u := url.URL{Scheme: "s3", Host: c.bucket, Path: "/" + c.prefix, RawQuery: q.Encode()}
	return u.String()
}

// An s3:// URL that parses holds a valid bucket, a plain prefix and sizes
// within S3's limits, and printed back as a URL it parses the same. One
// with credentials in it is refused without repeating them.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"s3://bucket/some/prefix/", "s3://bucket", "s3://bkt?endpoint=https://c.example:3", "s3://bkt?endpoint=minio.example.com:9000",
		"s3://bkt?endpoint=http://localhost:9000", "s3://bkt?endpoint=http://127.0.0.1:9000&path_style=false", "s3://bkt?path_style=true",
		"s3://bkt?path_style=maybe", "s3://bkt?endpoint=http://h:1/x", "s3://bkt?endpoint=ftp://h:1", "s3://bkt?region=ap-south-1",
		"s3://bkt?part_size=5MiB&colour=blue", "s3://bkt?region=a&region=b", "s3://bkt?part_size=1GiB", "s3://bkt?part_size=8192KiB",
		"s3://bkt?part_size=32mib", "s3://bkt?part_size=-5MiB", "s3://bkt?parts_in_flight=8", "s3://bkt?storage_class=STANDARD_IA",
		"s3://bkt?endpoint=http://h:1&ca_bundle=/x.pem", "s3://bkt/a//c", "s3://bkt/a/../c", "s3://ab", "s3://b:9000/x", "s3:///x",
		"s3://AKID:hunter2hunter2@bkt/x", "s3://bkt?endpoint=http://u:hunter2hunter2@h:1", "s3://bkt/p%3Fq%23r?endpoint=[::1]:9000",
	} {
		f.Add(s)
	}
	getenv := func(k string) string {
		if k == "HOME" {
			return "/home/fuzz"
		}
		return ""
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		// Credentials, in the URL or its endpoint, with the password
		// swapped for one the test knows: refused, and never in the error.
		const secret = "Hunter2Hunter2"
		if u.User != nil && !strings.Contains(raw, secret) {
			v := *u
			v.User = url.UserPassword(u.User.Username(), secret)
			if _, err := parseConfig(&v, getenv); err == nil || strings.Contains(err.Error(), secret) {
				t.Fatalf("credentials in %s: %v", v.String(), err)
			}
		}
		if q, err := url.ParseQuery(u.RawQuery); err == nil && !strings.Contains(raw, secret) {
			if e, err := url.Parse(q.Get("endpoint")); err == nil && e.User != nil {
				e.User = url.UserPassword(e.User.Username(), secret)
				q.Set("endpoint", e.String())
				v := *u
				v.RawQuery = q.Encode()
				if _, err := parseConfig(&v, getenv); err == nil || strings.Contains(err.Error(), secret) {
					t.Fatalf("credentials in the endpoint of %s: %v", v.String(), err)
				}
			}
		}
		c, err := parseConfig(u, getenv)
		if err != nil {
			return
		}
		if s3utils.CheckValidBucketName(c.bucket) != nil || strings.HasPrefix(c.prefix, "/") || strings.HasSuffix(c.prefix, "/") ||
			strings.Contains(c.prefix, "//") || c.prefix == "." || c.prefix == ".." || strings.HasPrefix(c.prefix, "../") ||
			strings.Contains("/"+c.prefix+"/", "/./") || strings.Contains("/"+c.prefix+"/", "/../") {
			t.Fatalf("%q: bucket %q, prefix %q", raw, c.bucket, c.prefix)
		}
		if c.partSize < minPartSize || c.partSize > maxPartSize || c.inFlight < 1 || c.inFlight > maxInFlight || c.host == "" {
			t.Fatalf("%q: %+v", raw, c)
		}
		printed := urlOf(c)
		u2, err := url.Parse(printed)
		if err != nil {
			t.Fatalf("%q printed as %q, which does not parse: %v", raw, printed, err)
		}
		c2, err := parseConfig(u2, getenv)
		if err != nil {
			t.Fatalf("%q printed as %q, which is refused: %v", raw, printed, err)
		}
		if *c2 != *c {
			t.Fatalf("%q printed as %q parses otherwise:\n%+v\n%+v", raw, printed, *c, *c2)
		}
	})
}
