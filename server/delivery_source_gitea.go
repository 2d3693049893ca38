package server

import (
	"net/http"

	"github.com/runatlantis/atlantis/server/events/vcs/gitea"
)

const (
	// giteaEventHeader is the header by which upstream's Post tells a Gitea
	// request, even when it also carries GitHub's headers (Gitea sends
	// those too).
	giteaEventHeader = "X-Gitea-Event"
	// giteaEventTypeHeader is the finer event type upstream's Gitea handler
	// switches on: pull_request_comment where X-Gitea-Event says
	// issue_comment.
	giteaEventTypeHeader = "X-Gitea-Event-Type"
	giteaDeliveryHeader  = "X-Gitea-Delivery"
	giteaSignatureHeader = "X-Gitea-Signature"
)

// newGiteaDeliveries are Gitea's rules, which are GitHub's: Gitea signs the
// body with the webhook secret (X-Gitea-Signature, HMAC-SHA256 in hex) and
// nothing else, and its "Replay" sends the stored body again under a new
// X-Gitea-Delivery UUID. So the record is the event type and the body.
func newGiteaDeliveries(secret []byte) *deliverySource {
	return &deliverySource{
		host:        "Gitea",
		routeHeader: giteaEventHeader,
		eventHeader: giteaEventTypeHeader,
		// The types upstream acts on (the switch in its handleGiteaPost); it
		// answers every other "Ignoring unsupported Gitea event type".
		// TestGiteaDedupedEventsAreUpstreams fails when an upstream upgrade
		// acts on another type.
		events: map[string]bool{"pull_request_comment": true, "pull_request": true, "pull_request_sync": true},
		idName: "UUID",
		secret: secret,
		identify: func(r *http.Request, body []byte) (delivery, bool) {
			// Upstream's own check, with upstream's function.
			if err := gitea.ValidateSignature(body, r.Header.Get(giteaSignatureHeader), secret); err != nil {
				return delivery{}, false
			}
			return delivery{
				header: giteaDeliveryHeader,
				id:     r.Header.Get(giteaDeliveryHeader),
				record: deliveryRecord(body, "gitea", r.Header.Get(giteaEventTypeHeader)),
			}, true
		},
	}
}
