package server

import (
	"net/http"

	events_controllers "github.com/runatlantis/atlantis/server/controllers/events"
)

const (
	githubDeliveryHeader = "X-GitHub-Delivery"
	githubEventHeader    = "X-GitHub-Event"
)

// newGithubDeliveries are GitHub's rules. GitHub signs the body with the
// webhook secret (X-Hub-Signature-256) and nothing else, so the record is
// the event type and the body, never the delivery ID: a captured body
// replayed under fresh IDs is one record, a duplicate, and creates nothing.
// A redelivery resends the same body, so it is that record too; and a
// request with a malformed ID is still refused when its payload was handled,
// or a signed body replayed under a malformed ID would run its command again.
func newGithubDeliveries(secret []byte) *deliverySource {
	validator := &events_controllers.DefaultGithubRequestValidator{}
	return &deliverySource{
		host:        "GitHub",
		routeHeader: githubEventHeader,
		eventHeader: githubEventHeader,
		// The types upstream acts on (the switch in its handleGithubPost);
		// it answers every other "Ignoring unsupported event". Recording only
		// these keeps a replay of a signed body under invented X-GitHub-Event
		// values (the signature does not cover headers) from filling the
		// records. TestGithubDedupedEventsAreUpstreams fails when an upstream
		// upgrade acts on another type.
		events: map[string]bool{"issue_comment": true, "pull_request": true},
		idName: "GUID",
		secret: secret,
		identify: func(r *http.Request, body []byte) (delivery, bool) {
			// Upstream's own check: on failure upstream rejects the request
			// with its own message, and nothing is recorded.
			if _, err := validator.Validate(withBody(r, body), secret); err != nil {
				return delivery{}, false
			}
			return delivery{
				header: githubDeliveryHeader,
				id:     r.Header.Get(githubDeliveryHeader),
				record: deliveryRecord(body, r.Header.Get(githubEventHeader)),
			}, true
		},
	}
}
