package testpki_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/atlantis-enhanced/atlantis/testing/testpki"
)

func TestHandshake(t *testing.T) {
	dir := t.TempDir()
	pki, err := testpki.New(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	other, err := testpki.New(dir, "other")
	if err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewUnstartedServer(nil)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.Certificate}, MinVersion: tls.VersionTLS12}
	// The rejected handshake below is expected; keep it out of the test log.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	addr := srv.Listener.Addr().String()

	handshake := func(pool *x509.CertPool, serverName string) error {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12})
		if err != nil {
			return err
		}
		return conn.Close()
	}
	// ServerName is varied instead of the address, so ::1 is checked even
	// where IPv6 loopback is unavailable.
	for _, name := range []string{"127.0.0.1", "::1", "localhost"} {
		if err := handshake(pki.Pool, name); err != nil {
			t.Errorf("handshake as %s with the signing CA: %v", name, err)
		}
	}
	var unknownCA x509.UnknownAuthorityError
	if err := handshake(other.Pool, "127.0.0.1"); !errors.As(err, &unknownCA) {
		t.Errorf("handshake with an unrelated CA: got %v, want an unknown authority error", err)
	}

	// External processes get the files, so they must match the in-memory PKI.
	caPEM, err := os.ReadFile(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	filePool := x509.NewCertPool()
	if !filePool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("no certificate in %s", pki.CAFile)
	}
	if err := handshake(filePool, "127.0.0.1"); err != nil {
		t.Errorf("handshake with CAFile: %v", err)
	}
	pair, err := tls.LoadX509KeyPair(pki.CertFile, pki.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !pair.Leaf.Equal(pki.Certificate.Leaf) {
		t.Error("CertFile differs from Certificate")
	}
}
