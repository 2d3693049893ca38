package redistest

// Option configures a standalone Server started by Start.
type Option func(*config)

type config struct {
	password   string
	aclUser    string
	aclPass    string
	tls        bool
	appendOnly bool
	// appendFsync is the AOF's appendfsync policy; empty keeps Redis's
	// default (everysec).
	appendFsync string
}

// WithPassword sets requirepass, so the default user needs pw.
func WithPassword(pw string) Option {
	return func(c *config) { c.password = pw }
}

// WithACLUser creates an ACL user with full rights and disables the default
// user, so only user/pw can authenticate.
func WithACLUser(user, pw string) Option {
	return func(c *config) {
		c.aclUser = user
		c.aclPass = pw
	}
}

// WithTLS serves TLS only (no plaintext port). The server certificate is for
// 127.0.0.1 and signed by a CA generated for this server; see Server.CAFile
// and Server.WrongCAFile.
func WithTLS() Option {
	return func(c *config) { c.tls = true }
}

// WithAppendOnly turns on the append-only file so Restart keeps data.
func WithAppendOnly() Option {
	return func(c *config) { c.appendOnly = true }
}

// WithAppendFsync turns on the append-only file with the appendfsync policy
// given: "always" (on disk before the reply), "everysec" or "no". What a Kill
// loses depends on it.
func WithAppendFsync(policy string) Option {
	return func(c *config) {
		c.appendOnly = true
		c.appendFsync = policy
	}
}
