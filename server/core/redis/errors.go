package redis

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
)

// classify turns a failed start-up PING into an error that says what is
// wrong and which flag fixes it. go-redis flattens some causes to strings
// (the sentinel lookup joins its errors), so string checks back up errors.As.
func classify(cfg Config, err error) error {
	addrs := strings.Join(cfg.addrs(), ", ")
	msg := err.Error()
	mode := cfg.mode()
	switch {
	case isAuthError(msg):
		user := cfg.Username
		if user == "" {
			user = "default"
		}
		return fmt.Errorf("authentication failed for user %q at %s: check %s/%s: %w",
			user, addrs, flagUsername, flagPassword, err)
	case isNotTLSServer(err, msg):
		return fmt.Errorf("TLS handshake with %s failed because the server does not speak TLS: unset %s, or point %s at the server's TLS port: %w",
			addrs, flagTLSEnabled, flagAddrs, err)
	case isCertError(err, msg):
		trust := "the system trust store"
		fix := fmt.Sprintf("set %s to the CA certificate that signed it", flagTLSCAFile)
		if cfg.TLSCAFile != "" {
			trust = "CA file " + cfg.TLSCAFile
			fix = fmt.Sprintf("check %s=%s is the CA that signed the server certificate, and that the certificate names the host in %s", flagTLSCAFile, cfg.TLSCAFile, flagAddrs)
		}
		return fmt.Errorf("TLS verification of %s failed against %s: %s: %w", addrs, trust, fix, err)
	case mode == ModeSentinel && strings.Contains(msg, "redis: nil"):
		return fmt.Errorf("sentinels at %s do not monitor a master named %q: check %s: %w",
			addrs, cfg.SentinelMaster, flagSentinelMaster, err)
	case mode == ModeSentinel && strings.Contains(msg, "unknown command") && strings.Contains(strings.ToLower(msg), "sentinel"):
		return fmt.Errorf("%s are not sentinels: set %s to the sentinel addresses, or %s to %s or %s: %w",
			addrs, flagAddrs, flagMode, ModeStandalone, ModeCluster, err)
	case mode == ModeCluster && strings.Contains(msg, "cluster support disabled"):
		return fmt.Errorf("%s is not a cluster node: set %s=%s, or %s to the cluster's nodes: %w",
			addrs, flagMode, ModeStandalone, flagAddrs, err)
	case isUnreachable(err, msg):
		what := "redis"
		if mode == ModeSentinel {
			what = "redis sentinels"
		}
		tlsState := "off"
		if cfg.TLSEnabled {
			tlsState = "on"
		}
		// A TLS client talking to a plaintext port (or the reverse) hangs
		// or is dropped rather than getting a clear protocol error, so the
		// TLS setting is part of the hint.
		return fmt.Errorf("cannot reach %s at %s within %s: is redis running and reachable? Check %s, and that the server's TLS matches %s (%s): %w",
			what, addrs, cfg.dialTimeout(), flagAddrs, flagTLSEnabled, tlsState, err)
	default:
		return fmt.Errorf("ping redis at %s (%s mode): %w", addrs, mode, err)
	}
}

func isAuthError(msg string) bool {
	for _, s := range []string{"WRONGPASS", "NOAUTH", "invalid password", "invalid username-password pair", "without any password configured"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func isNotTLSServer(err error, msg string) bool {
	var rh tls.RecordHeaderError
	return errors.As(err, &rh) || strings.Contains(msg, "does not look like a TLS handshake")
}

func isCertError(err error, msg string) bool {
	var (
		verify     *tls.CertificateVerificationError
		unknownCA  x509.UnknownAuthorityError
		hostname   x509.HostnameError
		invalid    x509.CertificateInvalidError
		systemRoot x509.SystemRootsError
	)
	return errors.As(err, &verify) || errors.As(err, &unknownCA) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &systemRoot) || strings.Contains(msg, "x509:")
}

func isUnreachable(err error, msg string) bool {
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		return true
	}
	for _, s := range []string{"connection refused", "i/o timeout", "no such host", "unreachable", "connection reset", "EOF"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// redact guarantees the password never reaches a log through an error. When
// the text contains it (say, a password pasted into the address flag) the
// cause chain is dropped too, since unwrapping would reveal it again.
func redact(err error, password string) error {
	if err == nil || password == "" || !strings.Contains(err.Error(), password) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), password, "[redacted]"))
}
