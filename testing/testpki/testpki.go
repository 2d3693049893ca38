// Package testpki generates a throwaway certificate authority and a loopback
// server certificate for tests that need real TLS: real clients (git,
// redis-server, Atlantis itself) verify certificates, so tests cannot simply
// turn verification off.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// validity is generous so a slow or paused test run never outlives its
// certificates; they are discarded with the test's temp dir anyway.
const validity = 7 * 24 * time.Hour

// PKI is a CA and the server certificate it signed, both in memory and as PEM
// files, since in-process servers want the former and external processes the
// latter.
type PKI struct {
	// CAFile is the PEM CA certificate.
	CAFile string
	// CertFile and KeyFile are the PEM server certificate and its PKCS #8 key.
	CertFile string
	KeyFile  string
	// Pool holds only the CA, so it trusts nothing but this PKI.
	Pool *x509.CertPool
	// Certificate is the server certificate with its key.
	Certificate tls.Certificate
}

// New generates a CA and a server certificate for 127.0.0.1, ::1 and
// localhost, and writes them into dir as <name>-ca.pem, <name>-cert.pem and
// <name>-key.pem. Each call makes an unrelated CA, so a second call with
// another name gives a CA that must not verify the first one's server.
func New(dir, name string) (*PKI, error) {
	// Backdated to tolerate clock skew between the test and other processes.
	notBefore := time.Now().Add(-time.Hour)
	notAfter := notBefore.Add(validity)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating %s CA key: %w", name, err)
	}
	caSerial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{CommonName: name + " test CA"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("creating %s CA certificate: %w", name, err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("parsing %s CA certificate: %w", name, err)
	}

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating %s server key: %w", name, err)
	}
	srvSerial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: srvSerial,
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		// ECDSA keys only sign; key encipherment applies to RSA.
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:    []string{"localhost"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("creating %s server certificate: %w", name, err)
	}
	srvCert, err := x509.ParseCertificate(srvDER)
	if err != nil {
		return nil, fmt.Errorf("parsing %s server certificate: %w", name, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		return nil, fmt.Errorf("encoding %s server key: %w", name, err)
	}

	p := &PKI{
		CAFile:   filepath.Join(dir, name+"-ca.pem"),
		CertFile: filepath.Join(dir, name+"-cert.pem"),
		KeyFile:  filepath.Join(dir, name+"-key.pem"),
		Pool:     x509.NewCertPool(),
		Certificate: tls.Certificate{
			Certificate: [][]byte{srvDER},
			PrivateKey:  srvKey,
			Leaf:        srvCert,
		},
	}
	p.Pool.AddCert(caCert)
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{
		{p.CAFile, "CERTIFICATE", caDER},
		{p.CertFile, "CERTIFICATE", srvDER},
		{p.KeyFile, "PRIVATE KEY", keyDER},
	} {
		data := pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der})
		if err := os.WriteFile(f.path, data, 0o600); err != nil {
			return nil, fmt.Errorf("writing %s: %w", f.path, err)
		}
	}
	return p, nil
}

// randomSerial keeps serials unique across calls without shared state, which
// RFC 5280 requires per issuer and clients cache by.
func randomSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating certificate serial: %w", err)
	}
	return serial, nil
}
