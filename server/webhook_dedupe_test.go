package server

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	events_controllers "github.com/runatlantis/atlantis/server/controllers/events"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

func signedWebhook(secret, delivery, body string) *http.Request {
	req := httptest.NewRequest("POST", "/events", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(githubEventHeader, "issue_comment")
	req.Header.Set(githubDeliveryHeader, delivery)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	return req
}

func TestDeliveryDeduper(t *testing.T) {
	client := redistest.Start(t).Client(t)
	const body = `{"action":"created"}`
	cases := []struct {
		description string
		secret      string
		requests    []*http.Request
		expBodies   []string // what upstream's handler received, in order
		expCodes    []int
		expKeys     int64
	}{
		{
			"redelivery reaches upstream once",
			"s3cret",
			[]*http.Request{signedWebhook("s3cret", "d-1", body), signedWebhook("s3cret", "d-1", body), signedWebhook("s3cret", "d-2", body)},
			[]string{body, body},
			[]int{http.StatusAccepted, http.StatusOK, http.StatusAccepted},
			2,
		},
		{
			"bad signature goes to upstream to be rejected and claims nothing",
			"s3cret",
			[]*http.Request{signedWebhook("wrong", "d-3", body), signedWebhook("s3cret", "d-3", body)},
			[]string{body, body},
			[]int{http.StatusAccepted, http.StatusAccepted},
			1,
		},
		{
			"a delivery upstream failed can be redelivered",
			"s3cret",
			[]*http.Request{signedWebhook("s3cret", "fail", body), signedWebhook("s3cret", "fail", body)},
			[]string{body, body},
			[]int{http.StatusInternalServerError, http.StatusInternalServerError},
			0,
		},
		{
			"without a webhook secret nothing is deduplicated",
			"",
			[]*http.Request{signedWebhook("x", "d-4", body), signedWebhook("x", "d-4", body)},
			[]string{body, body},
			[]int{http.StatusAccepted, http.StatusAccepted},
			0,
		},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			Ok(t, client.FlushAll(context.Background()).Err())
			var received []string
			d := &deliveryDeduper{
				next: func(w http.ResponseWriter, r *http.Request) {
					b, _ := io.ReadAll(r.Body)
					received = append(received, string(b))
					if r.Header.Get(githubDeliveryHeader) == "fail" {
						w.WriteHeader(http.StatusInternalServerError)
						return
					}
					w.WriteHeader(http.StatusAccepted)
				},
				validator: &events_controllers.DefaultGithubRequestValidator{},
				secret:    []byte(c.secret),
				client:    client,
				logger:    logging.NewNoopLogger(t),
			}
			var codes []int
			for _, req := range c.requests {
				rec := httptest.NewRecorder()
				d.ServeHTTP(rec, req)
				codes = append(codes, rec.Code)
			}
			Equals(t, c.expCodes, codes)
			Equals(t, c.expBodies, received)
			keys, err := client.DBSize(context.Background()).Result()
			Ok(t, err)
			Equals(t, c.expKeys, keys)
		})
	}
}
