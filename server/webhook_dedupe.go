package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	events_controllers "github.com/runatlantis/atlantis/server/controllers/events"
	"github.com/runatlantis/atlantis/server/logging"
)

const (
	githubDeliveryHeader = "X-GitHub-Delivery"
	githubEventHeader    = "X-GitHub-Event"
	// Upstream's Post hands a request with this header to its Gitea handler,
	// even when it also carries GitHub's headers.
	giteaEventHeader = "X-Gitea-Event"
	// deliveryTTL spans GitHub's redelivery window (3 days), so a
	// redelivery is always recognised.
	deliveryTTL = 72 * time.Hour
	// defaultDeliveryClaimTTL is how long a claim stands before it is
	// confirmed. Upstream answers a webhook within seconds (it runs commands
	// on their own goroutines, and GitHub gives up after 10 s), so it is
	// never reached by a live replica; a dead one's claim is gone by the time
	// anyone can press "Redeliver".
	defaultDeliveryClaimTTL = 2 * time.Minute
	// defaultDeliveryRecords caps the records kept: 200 000 deliveries in
	// 72 hours is 2 700 an hour. At the cap the set takes about 26 MiB, at
	// most 32 MiB (TestDeliveryRecordsMemoryAtCap checks the docs' figure).
	defaultDeliveryRecords = 200_000
	// maxWebhookBody matches GitHub's cap on webhook payloads.
	maxWebhookBody = 25 << 20
	// logValueMax bounds what a log line quotes of a header value.
	logValueMax = 64
)

// dedupedEvents are the GitHub event types upstream acts on (the switch in
// its handleGithubPost); it answers every other type "Ignoring unsupported
// event", so a copy of one is harmless. Recording only these keeps a replay
// of a signed body under invented X-GitHub-Event values (the signature does
// not cover headers) from filling the records. TestDedupedEventsAreUpstreams
// fails when an upstream upgrade acts on another type.
var dedupedEvents = map[string]bool{"issue_comment": true, "pull_request": true}

// deliveryIDPattern is the GUID GitHub sends in X-GitHub-Delivery.
var deliveryIDPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

var (
	//go:embed lua/delivery_helpers.lua
	deliveryHelpersLua string
	//go:embed lua/delivery_claim.lua
	deliveryClaimLua string
	//go:embed lua/delivery_confirm.lua
	deliveryConfirmLua string
	//go:embed lua/delivery_forget.lua
	deliveryForgetLua string
	//go:embed lua/delivery_seen.lua
	deliverySeenLua string

	deliveryClaimScript   = redis.NewScript(deliveryHelpersLua + "\n" + deliveryClaimLua)
	deliveryConfirmScript = redis.NewScript(deliveryHelpersLua + "\n" + deliveryConfirmLua)
	deliveryForgetScript  = redis.NewScript(deliveryForgetLua)
	deliverySeenScript    = redis.NewScript(deliveryHelpersLua + "\n" + deliverySeenLua)
)

// deliveryDeduper sits in front of upstream's /events handler. GitHub may
// deliver one event twice (redelivery, retries after a timeout), and with
// several replicas behind a load balancer the copies land on different
// replicas, which would each plan or apply. The first replica to claim a
// delivery in Redis handles it; the others answer 200 and drop it.
//
// Only requests that pass upstream's signature check may claim, so a forged
// request can never suppress the real delivery. The signature covers the
// body and nothing else, so the record is keyed by a hash of the payload,
// never by the delivery ID: a captured body replayed under fresh IDs is one
// record, a duplicate, and creates nothing.
type deliveryDeduper struct {
	next      http.HandlerFunc
	validator events_controllers.GithubRequestValidator
	secret    []byte
	client    redis.UniversalClient
	keyPrefix string
	logger    logging.SimpleLogging
	// maxRecords caps the records kept; zero means defaultDeliveryRecords.
	maxRecords int
	// claimTTL is how long an unconfirmed claim stands; zero means
	// defaultDeliveryClaimTTL.
	claimTTL time.Duration
}

func (d *deliveryDeduper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	event := r.Header.Get(githubEventHeader)
	// Without a webhook secret upstream accepts unsigned requests, and an
	// unsigned request must not claim anything: pass everything through.
	// So do events upstream ignores, and what upstream handles as Gitea's.
	if len(d.secret) == 0 || !dedupedEvents[event] || r.Header.Get(giteaEventHeader) != "" {
		d.next(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxWebhookBody))
	if err != nil {
		http.Error(w, fmt.Sprintf("reading webhook body: %s", err), http.StatusBadRequest)
		return
	}
	check := r.Clone(r.Context())
	check.Body = io.NopCloser(bytes.NewReader(body))
	r.Body = io.NopCloser(bytes.NewReader(body))
	if _, err := d.validator.Validate(check, d.secret); err != nil {
		// Upstream rejects it with its own message; nothing is recorded.
		d.next(w, r)
		return
	}
	id := r.Header.Get(githubDeliveryHeader)
	record := deliveryRecord(event, body)
	if !deliveryIDPattern.MatchString(id) {
		// GitHub always sends a GUID, so GitHub did not send this request as
		// it is. It claims nothing, so whatever sent it gets upstream's plain
		// behaviour; yet a payload already handled is still refused, or a
		// signed body replayed under a malformed ID would run its command
		// again.
		d.logger.Warn("%s %s is not a GUID as GitHub sends: handling this webhook without de-duplication", githubDeliveryHeader, quoteForLog(id))
		seen, err := d.seen(r.Context(), record)
		if err != nil {
			d.logger.Warn("could not look up GitHub delivery %s in Redis, handling it anyway: %s", quoteForLog(id), err)
		}
		if seen {
			d.ignore(w, quoteForLog(id))
			return
		}
		d.next(w, r)
		return
	}
	expiry, err := d.claim(r.Context(), record)
	if err != nil {
		// Losing the dedupe record is better than losing the event.
		d.logger.Warn("could not record GitHub delivery %s in Redis, handling it anyway: %s", id, err)
		d.next(w, r)
		return
	}
	if expiry == 0 {
		d.ignore(w, id)
		return
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	d.next(rec, r)
	if rec.status >= http.StatusBadRequest {
		// Upstream did not take the event: let GitHub's redelivery try again.
		d.forget(id, record, expiry)
		return
	}
	d.confirm(id, record)
}

// ignore answers a copy of a delivery that was handled already. The 200
// keeps GitHub from reporting the copy as failed.
func (d *deliveryDeduper) ignore(w http.ResponseWriter, id string) {
	d.logger.Info("GitHub delivery %s was already handled by a replica; ignoring this copy", id)
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "Ignoring delivery %s: already handled\n", id) // nolint: errcheck
}

// deliveryRecord names a delivery by what the signature vouches for, the
// body, and the event type upstream parses it as: the first 128 bits of
// SHA-256, hex. Header values hold no NUL, so the separator is unambiguous.
func deliveryRecord(event string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(event)) // nolint: errcheck
	h.Write([]byte{0})     // nolint: errcheck
	h.Write(body)          // nolint: errcheck
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// quoteForLog quotes an untrusted header value for a log line: escaped, so
// it cannot forge a line, and cut, so it cannot flood the log.
func quoteForLog(v string) string {
	if len(v) <= logValueMax {
		return strconv.Quote(v)
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(v[:logValueMax]), len(v))
}

func (d *deliveryDeduper) recordsKey() string {
	return d.keyPrefix + "atlantis:webhook-deliveries"
}

func (d *deliveryDeduper) limits() (maxRecords int, claimTTL time.Duration) {
	maxRecords, claimTTL = d.maxRecords, d.claimTTL
	if maxRecords <= 0 {
		maxRecords = defaultDeliveryRecords
	}
	if claimTTL <= 0 {
		claimTTL = defaultDeliveryClaimTTL
	}
	return maxRecords, claimTTL
}

// claim records the delivery for claimTTL. It returns the claim's expiry
// (Redis server time, unix ms), which forget needs, or 0 when the record
// exists already: the delivery is a duplicate.
func (d *deliveryDeduper) claim(ctx context.Context, record string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	maxRecords, claimTTL := d.limits()
	return deliveryClaimScript.Run(ctx, d.client, []string{d.recordsKey()}, record, claimTTL.Milliseconds(), maxRecords).Int64()
}

// seen reports whether the record stands, storing nothing.
func (d *deliveryDeduper) seen(ctx context.Context, record string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	n, err := deliverySeenScript.Run(ctx, d.client, []string{d.recordsKey()}, record).Int64()
	return n == 1, err
}

// confirm makes a handled delivery's record last deliveryTTL.
func (d *deliveryDeduper) confirm(id, record string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	maxRecords, claimTTL := d.limits()
	err := deliveryConfirmScript.Run(ctx, d.client, []string{d.recordsKey()}, record, deliveryTTL.Milliseconds(), maxRecords).Err()
	if err != nil {
		d.logger.Warn("could not confirm GitHub delivery %s; a copy of it arriving after %s will be handled again: %s", id, claimTTL, err)
	}
}

// forget drops the claim that returned expiry, unless it lapsed and the
// record is someone else's by now.
func (d *deliveryDeduper) forget(id, record string, expiry int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := deliveryForgetScript.Run(ctx, d.client, []string{d.recordsKey()}, record, expiry).Err(); err != nil {
		_, claimTTL := d.limits()
		d.logger.Warn("could not forget GitHub delivery %s, a redelivery of it within %s will be ignored: %s", id, claimTTL, err)
	}
}

// statusRecorder remembers the status upstream's handler answered.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
