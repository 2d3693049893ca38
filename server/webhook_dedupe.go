package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
	events_controllers "github.com/runatlantis/atlantis/server/controllers/events"
	"github.com/runatlantis/atlantis/server/logging"
)

const (
	githubDeliveryHeader = "X-GitHub-Delivery"
	githubEventHeader    = "X-GitHub-Event"
	// deliveryTTL outlives GitHub's redelivery window, so a redelivery is
	// always recognised.
	deliveryTTL = 72 * time.Hour
	// maxWebhookBody matches GitHub's cap on webhook payloads.
	maxWebhookBody = 25 << 20
)

// deliveryDeduper sits in front of upstream's /events handler. GitHub may
// deliver one event twice (redelivery, retries after a timeout), and with
// several replicas behind a load balancer the copies land on different
// replicas, which would each plan or apply. The first replica to claim a
// delivery ID in Redis handles it; the others answer 200 and drop it.
//
// Only requests that pass upstream's signature check may claim an ID, so a
// forged request can never suppress the real delivery.
type deliveryDeduper struct {
	next      http.HandlerFunc
	validator events_controllers.GithubRequestValidator
	secret    []byte
	client    redis.UniversalClient
	keyPrefix string
	logger    logging.SimpleLogging
}

func (d *deliveryDeduper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get(githubDeliveryHeader)
	// Without a webhook secret upstream accepts unsigned requests, and an
	// unsigned request must not claim anything: pass everything through.
	if id == "" || r.Header.Get(githubEventHeader) == "" || len(d.secret) == 0 {
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
	if _, err := d.validator.Validate(check, d.secret); err != nil {
		// Upstream rejects it with its own message; nothing is recorded.
		r.Body = io.NopCloser(bytes.NewReader(body))
		d.next(w, r)
		return
	}
	first, err := d.claim(r.Context(), id)
	if err != nil {
		// Losing the dedupe record is better than losing the event.
		d.logger.Warn("could not record GitHub delivery %s in Redis, handling it anyway: %s", id, err)
	} else if !first {
		d.logger.Info("GitHub delivery %s was already handled by a replica; ignoring this copy", id)
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, "Ignoring delivery %s: already handled\n", id) // nolint: errcheck
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	d.next(rec, r)
	if first && rec.status >= http.StatusBadRequest {
		// Upstream did not take the event: let GitHub's redelivery try again.
		d.release(id)
	}
}

// release forgets a claimed delivery.
func (d *deliveryDeduper) release(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := d.client.Del(ctx, d.deliveryKey(id)).Err(); err != nil {
		d.logger.Warn("could not forget GitHub delivery %s, a redelivery of it will be ignored: %s", id, err)
	}
}

func (d *deliveryDeduper) deliveryKey(id string) string {
	return d.keyPrefix + "atlantis:github-delivery:" + id
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

// claim records the delivery and reports whether this call was the first.
func (d *deliveryDeduper) claim(ctx context.Context, id string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return d.client.SetNX(ctx, d.deliveryKey(id), time.Now().UTC().Format(time.RFC3339), deliveryTTL).Result()
}
