package s3

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tlsFront is the package's versitygw behind a TLS listener whose
// self-signed certificate names only name: a real S3 server over TLS,
// reached at 127.0.0.1, which the certificate does not name.
func tlsFront(t *testing.T, name string) (addr, caFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	target := strings.TrimPrefix(srv.Endpoint, "http://")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// A plain-http client fails the handshake here, and is
				// hung up on, as crypto/tls servers (versitygw's) do.
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String(), caFile
}

// rawServer answers every connection with reply and hangs up.
func rawServer(t *testing.T, reply []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Read(make([]byte, 4096))
				c.Write(reply)
			}()
		}
	}()
	return ln.Addr().String()
}

// Each TLS mix-up names its cause and its fix: a certificate for another
// name (with or without ca_bundle, which cannot help), plain http to a
// TLS server however it answers, and TLS to a plain http server.
func TestTLSMessages(t *testing.T) {
	front, ca := tlsFront(t, "s3.volbak.test")
	_, port, _ := net.SplitHostPort(front)
	goTLS := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer goTLS.Close()
	alert := rawServer(t, []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46}) // OpenSSL's protocol_version alert
	env := srv.Env()
	delete(env, "AWS_ENDPOINT_URL")
	b := newBucket(t, srv, "volbaktest-tls")

	hostname := []string{"certificate for s3.volbak.test, not for 127.0.0.1", "https://s3.volbak.test:" + port}
	useHTTPS := func(addr string) []string { return []string{"speaks TLS", "use endpoint=https://" + addr} }
	tests := []struct {
		name, url string
		want      []string
		not       string
	}{
		{"other name, with ca_bundle", "s3://" + b + "?endpoint=https://" + front + "&ca_bundle=" + ca, hostname, "ca_bundle"},
		{"other name, no ca_bundle", "s3://" + b + "?endpoint=https://" + front, hostname, "ca_bundle"},
		{"http to versitygw over TLS", "s3://" + b + "?endpoint=http://" + front, useHTTPS(front), ""},
		{"http to Go's TLS server", "s3://" + b + "?endpoint=" + strings.Replace(goTLS.URL, "https://", "http://", 1), useHTTPS(strings.TrimPrefix(goTLS.URL, "https://")), ""},
		{"http answered by a TLS alert", "s3://" + b + "?endpoint=http://" + alert, useHTTPS(alert), ""},
		{"https to plain http", "s3://" + b + "?endpoint=https://" + strings.TrimPrefix(srv.Endpoint, "http://"), []string{"does not speak TLS", "use endpoint=http://"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := openURL(tt.url, false, env)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			t.Log(err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q", w)
				}
			}
			if tt.not != "" && strings.Contains(err.Error(), tt.not) {
				t.Errorf("error says %q", tt.not)
			}
		})
	}
	// A plain http server that hangs up is not taken for TLS.
	hangup := rawServer(t, nil)
	if _, err := openURL("s3://"+b+"?endpoint=http://"+hangup, false, env); err == nil || strings.Contains(err.Error(), "TLS") {
		t.Errorf("a server that hangs up: %v", err)
	}
}
