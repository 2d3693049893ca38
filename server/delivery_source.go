package server

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"regexp"
)

// deliverySource is one VCS host's rules for de-duplicating its webhooks:
// which requests upstream handles as that host's, which event types upstream
// acts on, how upstream checks a request, and what names a delivery.
type deliverySource struct {
	// host names the VCS host in log lines: "GitHub".
	host string
	// routeHeader is the header by which upstream's Post hands a request to
	// this host's handler.
	routeHeader string
	// eventHeader carries the event type, and events are the types
	// upstream acts on: only those are de-duplicated. Upstream ignores the
	// others, so a copy of one is harmless.
	eventHeader string
	events      map[string]bool
	// idName is what the host calls the form of its delivery IDs, for the
	// log line about a malformed one: "GUID".
	idName string
	// secret is the host's webhook secret. Without one upstream accepts
	// requests unchecked, and nothing unchecked may claim a delivery, so the
	// host's requests all pass through.
	secret []byte
	// identify checks r, whose body is body, by upstream's own rules and
	// names its delivery. ok is false when upstream would reject r or ignore
	// its event: then nothing is looked up or recorded. identify leaves
	// r.Body unread.
	identify func(r *http.Request, body []byte) (d delivery, ok bool)
}

// routes reports whether upstream's Post hands r to this host's handler.
func (s *deliverySource) routes(r *http.Request) bool {
	return r.Header.Get(s.routeHeader) != ""
}

// dedupes reports, from the headers alone, whether r may be de-duplicated.
func (s *deliverySource) dedupes(r *http.Request) bool {
	return len(s.secret) > 0 && s.events[r.Header.Get(s.eventHeader)]
}

// delivery is what a source says of one checked request.
type delivery struct {
	// header is the header that carries the delivery's ID, id its value as
	// sent. Only an id in the form every host sends its IDs in
	// (deliveryIDPattern) may claim a record: a request with another was
	// not sent by the host as it is, and gets upstream's plain behaviour.
	header, id string
	// record names the delivery in the records set.
	record string
	// namedByID says the record is named by id. Then a request whose id is
	// malformed names no record that is looked up; otherwise (a record
	// named by a signed body) a delivery already handled is still refused.
	namedByID bool
}

// upstreamDeliverySources are the hosts whose deliveries are de-duplicated,
// in the order upstream's Post tells them apart: a request with Gitea's
// event header is Gitea's, even with GitHub's headers (Gitea sends those
// too); then GitHub's, then GitLab's. An empty secret leaves that host's
// requests alone.
func upstreamDeliverySources(secrets webhookSecrets) []*deliverySource {
	return []*deliverySource{
		newGiteaDeliveries(secrets.gitea),
		newGithubDeliveries(secrets.github),
		newGitlabDeliveries(secrets.gitlab),
	}
}

// deliveryIDPattern is the UUID form (8-4-4-4-12 hex digits) in which
// GitHub, GitLab and Gitea all send their delivery IDs.
var deliveryIDPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// deliveryRecord names a delivery by fields and then body: the first 128
// bits of SHA-256, hex, over each field followed by a NUL, then the body.
// Fields are header values and constants, which hold no NUL, so two
// different lists never give the same bytes. A GitHub record is its event
// type and body alone; every other source's first field is its own name,
// which is no GitHub event type, so no two sources share a record.
func deliveryRecord(body []byte, fields ...string) string {
	h := sha256.New()
	for _, f := range fields {
		h.Write([]byte(f)) // nolint: errcheck
		h.Write([]byte{0}) // nolint: errcheck
	}
	h.Write(body) // nolint: errcheck
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// withBody is a copy of r to hand to a validator that reads the body,
// leaving r's own body unread.
func withBody(r *http.Request, body []byte) *http.Request {
	c := r.Clone(r.Context())
	c.Body = io.NopCloser(bytes.NewReader(body))
	return c
}

// webhookSecrets are the webhook secrets of upstream's user config, one per
// host whose deliveries are de-duplicated; an empty one turns its host off.
type webhookSecrets struct {
	github, gitlab, gitea []byte
}
