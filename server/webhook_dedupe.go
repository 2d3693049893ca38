package server

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/logging"
)

const (
	// deliveryTTL spans GitHub's redelivery window (3 days), so a
	// redelivery is always recognised.
	deliveryTTL = 72 * time.Hour
	// defaultDeliveryClaimTTL is how long a claim stands before it is
	// confirmed. Upstream answers a webhook within seconds (it runs commands
	// on their own goroutines; GitHub and GitLab give up after 10 s, Gitea
	// after 5 s by default), so it is never reached by a live replica; a dead
	// one's claim is gone by the time anyone can press "Redeliver".
	defaultDeliveryClaimTTL = 2 * time.Minute
	// defaultDeliveryRecords caps the records kept: 200 000 deliveries in
	// 72 hours is 2 700 an hour. At the cap the set takes about 26 MiB, at
	// most 32 MiB (TestDeliveryRecordsMemoryAtCap checks the docs' figure).
	defaultDeliveryRecords = 200_000
	// maxWebhookBody matches GitHub's and GitLab's cap on webhook payloads.
	maxWebhookBody = 25 << 20
	// logValueMax bounds what a log line quotes of a header value.
	logValueMax = 64
)

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
	deliveryForgetScript  = redis.NewScript(deliveryHelpersLua + "\n" + deliveryForgetLua)
	deliverySeenScript    = redis.NewScript(deliveryHelpersLua + "\n" + deliverySeenLua)
)

// deliveryDeduper sits in front of upstream's /events handler. A VCS host
// may deliver one event twice (redelivery, resends, retries after a
// timeout), and with several replicas behind a load balancer the copies land
// on different replicas, which would each plan or apply. The first replica to
// claim a delivery in Redis handles it; the others answer 200 and drop it.
//
// Only requests that pass upstream's own check of the host's webhook secret
// may claim, so a forged request can never suppress the real delivery. What
// names a delivery is each host's own (see deliverySource): for a signed
// body, the body; for GitLab's token, GitLab's delivery ID.
type deliveryDeduper struct {
	next http.HandlerFunc
	// sources are asked in order; the first that routes a request decides
	// for it, as upstream's Post does (see upstreamDeliverySources).
	sources   []*deliverySource
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
	src := d.sourceFor(r)
	// A request of no host we know, of a host without a webhook secret
	// (upstream accepts it unchecked, and nothing unchecked may claim), or of
	// an event upstream ignores, passes through.
	if src == nil || !src.dedupes(r) {
		d.next(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxWebhookBody+1))
	if err != nil {
		http.Error(w, fmt.Sprintf("reading webhook body: %s", err), http.StatusBadRequest)
		return
	}
	if len(body) > maxWebhookBody {
		// Larger than any host sends: upstream gets it whole, unrecorded.
		r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(body), r.Body))
		d.next(w, r)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	dl, ok := src.identify(r, body)
	if !ok {
		// Upstream rejects it with its own message, or ignores its event.
		d.next(w, r)
		return
	}
	host := src.host
	if !deliveryIDPattern.MatchString(dl.id) {
		// The host always sends this form, so the host did not send this
		// request as it is. It claims nothing, so whatever sent it gets
		// upstream's plain behaviour; yet where the record is named without
		// the ID (by a signed body), a delivery already handled is still
		// refused.
		d.logger.Warn("%s %s is not a %s as %s sends: handling this webhook without de-duplication", dl.header, quoteForLog(dl.id), src.idName, host)
		if !dl.namedByID {
			seen, err := d.seen(r.Context(), dl.record)
			if err != nil {
				d.logger.Warn("could not look up %s delivery %s in Redis, handling it anyway: %s", host, quoteForLog(dl.id), err)
			}
			if seen {
				d.ignore(w, host, quoteForLog(dl.id))
				return
			}
		}
		d.next(w, r)
		return
	}
	expiry, err := d.claim(r.Context(), dl.record)
	if err != nil {
		// Losing the dedupe record is better than losing the event. The claim
		// may have been stored all the same (its reply lost, or too few
		// replicas acknowledged it), so it is settled as any claim is.
		d.logger.Warn("could not record %s delivery %s in Redis, handling it anyway: %s", host, dl.id, err)
		d.handle(w, r, host, dl.id, dl.record, unknownClaim)
		return
	}
	if expiry == 0 {
		d.ignore(w, host, dl.id)
		return
	}
	d.handle(w, r, host, dl.id, dl.record, expiry)
}

// unknownClaim is the expiry of a claim whose outcome is unknown.
const unknownClaim = 0

// handle passes r to upstream and settles the delivery's claim: confirmed
// when upstream took the event, forgotten when it did not, so that the
// host's redelivery is handled rather than ignored as a copy.
func (d *deliveryDeduper) handle(w http.ResponseWriter, r *http.Request, host, id, record string, expiry int64) {
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	d.next(rec, r)
	if rec.status >= http.StatusBadRequest {
		d.forget(host, id, record, expiry)
		return
	}
	d.confirm(host, id, record)
}

// sourceFor is the source upstream's Post would hand r to, or nil.
func (d *deliveryDeduper) sourceFor(r *http.Request) *deliverySource {
	for _, src := range d.sources {
		if src.routes(r) {
			return src
		}
	}
	return nil
}

// ignore answers a copy of a delivery that was handled already. The 200
// keeps the host from reporting the copy as failed.
func (d *deliveryDeduper) ignore(w http.ResponseWriter, host, id string) {
	d.logger.Info("%s delivery %s was already handled by a replica; ignoring this copy", host, id)
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "Ignoring delivery %s: already handled\n", id) // nolint: errcheck
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
	expiry, err := deliveryClaimScript.Run(ctx, d.client, []string{d.recordsKey()}, record, claimTTL.Milliseconds(), maxRecords).Int64()
	return expiry, d.recordsError(err)
}

// seen reports whether the record stands, storing nothing.
func (d *deliveryDeduper) seen(ctx context.Context, record string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	n, err := deliverySeenScript.Run(ctx, d.client, []string{d.recordsKey()}, record).Int64()
	return n == 1, d.recordsError(err)
}

// recordsError names the records key in err and, when the key holds what
// the scripts do not keep there, says how to clear it.
func (d *deliveryDeduper) recordsError(err error) error {
	if err == nil {
		return nil
	}
	if redis.HasErrorPrefix(err, "CORRUPT") || redis.HasErrorPrefix(err, "WRONGTYPE") {
		return fmt.Errorf("webhook delivery records at redis key %q: %w (delete the key with redis-cli DEL: "+
			"it holds only de-duplication records, which start again empty)", d.recordsKey(), err)
	}
	return fmt.Errorf("webhook delivery records at redis key %q: %w", d.recordsKey(), err)
}

// confirm makes a handled delivery's record last deliveryTTL.
func (d *deliveryDeduper) confirm(host, id, record string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	maxRecords, claimTTL := d.limits()
	err := d.recordsError(deliveryConfirmScript.Run(ctx, d.client, []string{d.recordsKey()}, record, deliveryTTL.Milliseconds(), maxRecords).Err())
	if err != nil {
		d.logger.Warn("could not confirm %s delivery %s; a copy of it arriving after %s will be handled again: %s", host, id, claimTTL, err)
	}
}

// forget drops the claim that returned expiry, unless it lapsed and the
// record is someone else's by now; with unknownClaim, any unconfirmed claim
// of the record.
func (d *deliveryDeduper) forget(host, id, record string, expiry int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, claimTTL := d.limits()
	if err := d.recordsError(deliveryForgetScript.Run(ctx, d.client, []string{d.recordsKey()}, record, expiry, claimTTL.Milliseconds()).Err()); err != nil {
		d.logger.Warn("could not forget %s delivery %s, a redelivery of it within %s will be ignored: %s", host, id, claimTTL, err)
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
