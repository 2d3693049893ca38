package server

import (
	"net/http"

	events_controllers "github.com/runatlantis/atlantis/server/controllers/events"
	gitlab "gitlab.com/gitlab-org/api/client-go"
)

const (
	gitlabEventHeader = "X-Gitlab-Event"
	// gitlabIdempotencyHeader is GitLab's delivery ID since 17.4.
	gitlabIdempotencyHeader = "Idempotency-Key"
	// gitlabEventUUIDHeader is the ID older GitLab sends.
	gitlabEventUUIDHeader = "X-Gitlab-Event-UUID"
)

// newGitlabDeliveries are GitLab's rules. GitLab signs nothing: it sends the
// webhook secret itself in X-Gitlab-Token, which upstream compares with
// --gitlab-webhook-secret. The token says who sent a request, not what it
// says, so a body proves nothing that the headers do not: whoever holds the
// token can send any body under any ID, and keying the record by the body
// (as for GitHub) would protect against nobody who could not do worse.
//
// The record is therefore what GitLab says names the delivery:
//   - Idempotency-Key (GitLab 17.4 and later): a UUID made once for each
//     execution of a hook and sent again, unchanged, by every resend of it
//     ("Resend request", or the events API). The record is the event type
//     and this key, without the body: GitLab resends the body it logged,
//     which has user e-mail addresses redacted (and an oversize body
//     replaced), so a resent body is not the body first sent.
//   - X-Gitlab-Event-UUID (older GitLab, without Idempotency-Key): a UUID
//     for GitLab's recursion detection, not for one delivery. The hooks that
//     a webhook receiver's own API calls back into GitLab set off carry the
//     UUID of the webhook that started them, so two different events can
//     carry one value, and a resend gets a new one. Alone it would merge
//     different events, so the record is the event type, this UUID and the
//     body: it refuses only an exact copy of a request (a proxy or relay
//     sending it twice), never a different event.
//
// Either way the record is named by the ID, so a request whose ID is
// malformed claims nothing and is not looked up either. GitHub's rule of
// refusing a malformed ID for a payload already handled guards a signed body
// against replay; a GitLab body is not signed.
func newGitlabDeliveries(secret []byte) *deliverySource {
	validator := &events_controllers.DefaultGitlabRequestParserValidator{}
	return &deliverySource{
		host:        "GitLab",
		routeHeader: gitlabEventHeader,
		eventHeader: gitlabEventHeader,
		// The values upstream's parser reads a body for; for every other it
		// returns no event and upstream answers "Ignoring unsupported event".
		// Which of their bodies upstream acts on is the parser's answer (see
		// identify). TestGitlabDedupedEventsAreUpstreams fails when an
		// upstream upgrade acts on another type.
		events: map[string]bool{"Merge Request Hook": true, "Note Hook": true},
		idName: "UUID",
		secret: secret,
		identify: func(r *http.Request, body []byte) (delivery, bool) {
			// Upstream's own token check and parser: on an error upstream
			// rejects the request, and of what it parses it acts on merge
			// request events and comments on merge requests only (its
			// handleGitlabPost).
			event, err := validator.ParseAndValidate(withBody(r, body), secret)
			if err != nil {
				return delivery{}, false
			}
			switch event.(type) {
			case gitlab.MergeEvent, gitlab.MergeCommentEvent:
			default:
				return delivery{}, false
			}
			d := delivery{header: gitlabIdempotencyHeader, id: r.Header.Get(gitlabIdempotencyHeader), namedByID: true}
			var recordBody []byte
			if d.id == "" {
				d.header, d.id = gitlabEventUUIDHeader, r.Header.Get(gitlabEventUUIDHeader)
				recordBody = body
			}
			d.record = deliveryRecord(recordBody, "gitlab", r.Header.Get(gitlabEventHeader), d.header, d.id)
			return d, true
		},
	}
}
