package server

import (
	"net/http"
	"testing"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

func TestGiteaDeliveries(t *testing.T) {
	client := redistest.Start(t).Client(t)
	const comment, sync = "pull_request_comment", "pull_request_sync"
	const body = `{"action":"created","comment":{"id":1}}`
	const other = `{"action":"created","comment":{"id":2}}`
	runDeliveryCases(t, client, []deliveryCase{
		{
			description: "a redelivery (same ID, same body) is ignored",
			before:      []webhook{{host: hostGitea, id: guid1, body: body}},
			then:        []webhook{{host: hostGitea, id: guid1, body: body}},
			expCodes:    []int{http.StatusOK},
			expRecords:  []string{giteaRecord(comment, body)},
			expLog:      []string{"Gitea delivery " + guid1 + " was already handled by a replica; ignoring this copy"},
		},
		{
			description: "a Replay (the same signed body under a fresh UUID) is ignored and adds no record",
			before:      []webhook{{host: hostGitea, id: guid1, body: body}},
			then:        []webhook{{host: hostGitea, id: guid2, body: body}},
			expCodes:    []int{http.StatusOK},
			expRecords:  []string{giteaRecord(comment, body)},
		},
		{
			description: "the same signed body under a malformed ID is ignored and adds no record",
			before:      []webhook{{host: hostGitea, id: guid1, body: body}},
			then:        []webhook{{host: hostGitea, id: "replay-1", body: body}, {host: hostGitea, id: "", body: body}},
			expCodes:    []int{http.StatusOK, http.StatusOK},
			expRecords:  []string{giteaRecord(comment, body)},
		},
		{
			description: "a different body under the same ID is handled",
			before:      []webhook{{host: hostGitea, id: guid1, body: body}},
			then:        []webhook{{host: hostGitea, id: guid1, body: other}},
			expCodes:    []int{http.StatusAccepted},
			expRecords:  []string{giteaRecord(comment, body), giteaRecord(comment, other)},
		},
		{
			description: "the same body as another event type is another delivery",
			before:      []webhook{{host: hostGitea, id: guid1, body: body}},
			then:        []webhook{{host: hostGitea, event: sync, id: guid2, body: body}},
			expCodes:    []int{http.StatusAccepted},
			expRecords:  []string{giteaRecord(comment, body), giteaRecord(sync, body)},
		},
		{
			description: "a Gitea request is Gitea's though it carries GitHub's headers: GitHub's delivery of the same body is another",
			before:      []webhook{{host: hostGitea, id: guid1, body: body}},
			then:        []webhook{{host: hostGitHub, event: "issue_comment", id: guid1, body: body}},
			expCodes:    []int{http.StatusAccepted},
			expRecords:  []string{giteaRecord(comment, body), githubRecord("issue_comment", body)},
		},
		{
			description: "a signed request with a missing or non-UUID ID passes through and stores nothing",
			then:        []webhook{{host: hostGitea, id: "d-1", body: body}, {host: hostGitea, id: "", body: other}},
			expCodes:    []int{http.StatusAccepted, http.StatusAccepted},
			expLog: []string{
				`X-Gitea-Delivery "d-1" is not a UUID as Gitea sends: handling this webhook without de-duplication`,
				`X-Gitea-Delivery "" is not a UUID as Gitea sends`,
			},
		},
		{
			description: "events upstream ignores are passed through and not recorded",
			then: []webhook{
				{host: hostGitea, event: "push", id: guid1, body: body},
				{host: hostGitea, event: "issue_comment", id: guid1, body: body},
				{host: hostGitea, event: "pull_request_review_approved", id: guid1, body: body},
			},
			expCodes: []int{http.StatusAccepted, http.StatusAccepted, http.StatusAccepted},
		},
		{
			description: "a bad signature goes to upstream to be rejected and claims nothing",
			then:        []webhook{{host: hostGitea, sign: "wrong", id: guid1, body: body}, {host: hostGitea, id: guid1, body: body}},
			expCodes:    []int{http.StatusAccepted, http.StatusAccepted},
			expRecords:  []string{giteaRecord(comment, body)},
		},
		{
			description: "a delivery upstream failed is forgotten, so its redelivery is handled",
			then:        []webhook{{host: hostGitea, id: guid1, body: failBody}, {host: hostGitea, id: guid1, body: failBody}},
			expCodes:    []int{http.StatusInternalServerError, http.StatusInternalServerError},
		},
		{
			description: "without --gitea-webhook-secret nothing is de-duplicated",
			noSecret:    true,
			then:        []webhook{{host: hostGitea, sign: "x", id: guid1, body: body}, {host: hostGitea, sign: "x", id: guid1, body: body}},
			expCodes:    []int{http.StatusAccepted, http.StatusAccepted},
		},
	})
}

// TestGiteaDedupedEventsAreUpstreams: upstream ignores every Gitea event
// type the deduper leaves alone, so not recording those loses nothing. When
// this fails, upstream acts on a new event type: de-duplicate it too.
func TestGiteaDedupedEventsAreUpstreams(t *testing.T) {
	upstream := upstreamEvents(t, models.Gitea)
	// Gitea's X-Gitea-Event-Type values (its webhook module's HookEventType).
	events := []string{
		"create", "delete", "fork", "push", "issues", "issue_assign", "issue_label", "issue_milestone",
		"issue_comment", "pull_request", "pull_request_assign", "pull_request_label", "pull_request_milestone",
		"pull_request_comment", "pull_request_review_approved", "pull_request_review_rejected",
		"pull_request_review_comment", "pull_request_sync", "pull_request_review_request", "wiki",
		"repository", "release", "package", "status", "workflow_run", "workflow_job", "schedule",
	}
	claimed := 0
	for _, event := range events {
		h := webhook{host: hostGitea, event: event, id: guid1, body: "{}"}
		if claims(h) {
			claimed++
			continue
		}
		t.Run(event, func(t *testing.T) { assertUpstreamIgnores(t, upstream, h) })
	}
	Equals(t, len(newGiteaDeliveries(nil).events), claimed)
}
