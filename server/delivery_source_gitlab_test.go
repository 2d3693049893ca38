package server

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/runatlantis/atlantis/server/events/models"
	. "github.com/runatlantis/atlantis/testing"
	gitlab "gitlab.com/gitlab-org/api/client-go"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// GitLab bodies as upstream's parser reads them.
const (
	gitlabMR = `{"object_kind":"merge_request","user":{"email":"alice@example.com"},"object_attributes":{"iid":1,"action":"update"}}`
	// gitlabMRResent is gitlabMR as GitLab resends it: from its log, with
	// e-mail addresses redacted.
	gitlabMRResent = `{"object_kind":"merge_request","user":{"email":"[REDACTED]"},"object_attributes":{"iid":1,"action":"update"}}`
	gitlabMR2      = `{"object_kind":"merge_request","object_attributes":{"iid":2,"action":"update"}}`
	gitlabNote     = `{"object_kind":"note","object_attributes":{"noteable_type":"MergeRequest","note":"atlantis plan"}}`
)

func TestGitlabDeliveries(t *testing.T) {
	client := redistest.Start(t).Client(t)
	const mrHook, noteHook = "Merge Request Hook", "Note Hook"
	forged := "k-2\n[INFO] forged line"
	runDeliveryCases(t, client, []deliveryCase{
		{
			description: "a resend (same Idempotency-Key) is ignored, though GitLab resends the body with e-mails redacted",
			before:      []webhook{{host: hostGitLab, id: guid1, body: gitlabMR}},
			then:        []webhook{{host: hostGitLab, id: guid1, body: gitlabMRResent}},
			expCodes:    []int{http.StatusOK},
			expRecords:  []string{gitlabRecord(mrHook, guid1)},
			expLog:      []string{"GitLab delivery " + guid1 + " was already handled by a replica; ignoring this copy"},
		},
		{
			description: "a comment on a merge request is de-duplicated",
			before:      []webhook{{host: hostGitLab, event: noteHook, id: guid1, eventUUID: guid2, body: gitlabNote}},
			then:        []webhook{{host: hostGitLab, event: noteHook, id: guid1, eventUUID: guid3, body: gitlabNote}},
			expCodes:    []int{http.StatusOK},
			expRecords:  []string{gitlabRecord(noteHook, guid1)},
		},
		{
			description: "a new Idempotency-Key is a new delivery, whatever its body: the token does not vouch for a body",
			before:      []webhook{{host: hostGitLab, id: guid1, body: gitlabMR}},
			then:        []webhook{{host: hostGitLab, id: guid2, body: gitlabMR}},
			expCodes:    []int{http.StatusAccepted},
			expRecords:  []string{gitlabRecord(mrHook, guid1), gitlabRecord(mrHook, guid2)},
		},
		{
			description: "older GitLab, without Idempotency-Key: an exact copy (same X-Gitlab-Event-UUID and body) is ignored",
			before:      []webhook{{host: hostGitLab, eventUUID: guid1, body: gitlabMR}},
			then:        []webhook{{host: hostGitLab, eventUUID: guid1, body: gitlabMR}},
			expCodes:    []int{http.StatusOK},
			expRecords:  []string{gitlabUUIDRecord(mrHook, guid1, gitlabMR)},
			expLog:      []string{"GitLab delivery " + guid1 + " was already handled by a replica; ignoring this copy"},
		},
		{
			description: "older GitLab: another event under the same X-Gitlab-Event-UUID (hooks set off by a receiver calling back) is handled",
			before:      []webhook{{host: hostGitLab, eventUUID: guid1, body: gitlabMR}},
			then:        []webhook{{host: hostGitLab, eventUUID: guid1, body: gitlabMR2}},
			expCodes:    []int{http.StatusAccepted},
			expRecords:  []string{gitlabUUIDRecord(mrHook, guid1, gitlabMR), gitlabUUIDRecord(mrHook, guid1, gitlabMR2)},
		},
		{
			description: "a wrong token goes to upstream to be rejected and claims nothing, so it cannot suppress the real delivery",
			then:        []webhook{{host: hostGitLab, sign: "wrong", id: guid1, body: gitlabMR}, {host: hostGitLab, id: guid1, body: gitlabMR}},
			expCodes:    []int{http.StatusAccepted, http.StatusAccepted},
			expRecords:  []string{gitlabRecord(mrHook, guid1)},
		},
		{
			description: "a missing or malformed ID passes through and stores nothing, even for a delivery already handled",
			before:      []webhook{{host: hostGitLab, id: guid1, body: gitlabMR}},
			then: []webhook{
				{host: hostGitLab, id: "k-1", body: gitlabMR},
				{host: hostGitLab, id: "k-1", body: gitlabMR},
				// A malformed Idempotency-Key is not made good by a
				// well-formed X-Gitlab-Event-UUID.
				{host: hostGitLab, id: "k-1", eventUUID: guid2, body: gitlabMR},
				{host: hostGitLab, eventUUID: "e-1", body: gitlabMR},
				{host: hostGitLab, body: gitlabMR},
				{host: hostGitLab, id: forged, body: gitlabMR},
			},
			expCodes:   []int{http.StatusAccepted, http.StatusAccepted, http.StatusAccepted, http.StatusAccepted, http.StatusAccepted, http.StatusAccepted},
			expRecords: []string{gitlabRecord(mrHook, guid1)},
			expLog: []string{
				`Idempotency-Key "k-1" is not a UUID as GitLab sends: handling this webhook without de-duplication`,
				`X-Gitlab-Event-UUID "e-1" is not a UUID as GitLab sends`,
				`X-Gitlab-Event-UUID "" is not a UUID as GitLab sends`,
				`Idempotency-Key "k-2\n[INFO] forged line" is not a UUID`,
			},
		},
		{
			description: "events upstream ignores or refuses pass through and are not recorded",
			then: []webhook{
				{host: hostGitLab, event: "Push Hook", id: guid1, body: gitlabMR},
				{host: hostGitLab, event: "System Hook", id: guid1, body: gitlabMR},
				{host: hostGitLab, event: noteHook, id: guid1, body: `{"object_kind":"note","object_attributes":{"noteable_type":"Commit"}}`},
				{host: hostGitLab, event: noteHook, id: guid1, body: `{"object_kind":"note","object_attributes":{"noteable_type":"Issue"}}`},
				{host: hostGitLab, id: guid1, body: `not json`},
			},
			expCodes: []int{http.StatusAccepted, http.StatusAccepted, http.StatusAccepted, http.StatusAccepted, http.StatusAccepted},
		},
		{
			description: "a delivery upstream failed is forgotten, so its resend is handled",
			then:        []webhook{{host: hostGitLab, id: guid1, body: failBody}, {host: hostGitLab, id: guid1, body: failBody}},
			expCodes:    []int{http.StatusInternalServerError, http.StatusInternalServerError},
		},
		{
			description: "without --gitlab-webhook-secret nothing is de-duplicated",
			noSecret:    true,
			then:        []webhook{{host: hostGitLab, sign: "x", id: guid1, body: gitlabMR}, {host: hostGitLab, sign: "x", id: guid1, body: gitlabMR}},
			expCodes:    []int{http.StatusAccepted, http.StatusAccepted},
		},
	})
}

// TestGitlabDedupedEventsAreUpstreams: every GitLab request the deduper
// leaves alone, upstream ignores, so not recording it loses nothing. When
// this fails, upstream acts on a new event type: de-duplicate it too.
func TestGitlabDedupedEventsAreUpstreams(t *testing.T) {
	upstream := upstreamEvents(t, models.Gitlab)
	events := []gitlab.EventType{
		gitlab.EventConfidentialIssue, gitlab.EventConfidentialNote, gitlab.EventTypeBuild,
		gitlab.EventTypeDeployment, gitlab.EventTypeFeatureFlag, gitlab.EventTypeIssue, gitlab.EventTypeJob,
		gitlab.EventTypeMember, gitlab.EventTypeMergeRequest, gitlab.EventTypeNote, gitlab.EventTypePipeline,
		gitlab.EventTypePush, gitlab.EventTypeRelease, gitlab.EventTypeResourceAccessToken,
		gitlab.EventTypeServiceHook, gitlab.EventTypeSubGroup, gitlab.EventTypeSystemHook,
		gitlab.EventTypeTagPush, gitlab.EventTypeWikiPage,
	}
	claimed := 0
	for _, event := range events {
		for _, noteable := range []string{"MergeRequest", "Commit", "Issue", "Snippet"} {
			h := webhook{
				host:  hostGitLab,
				event: string(event),
				id:    guid1,
				body:  fmt.Sprintf(`{"object_attributes":{"noteable_type":%q}}`, noteable),
			}
			if claims(h) {
				claimed++
				continue
			}
			t.Run(fmt.Sprintf("%s on %s", event, noteable), func(t *testing.T) { assertUpstreamIgnores(t, upstream, h) })
		}
	}
	// Every merge request event, and the comments on merge requests.
	Equals(t, 4+1, claimed)
}
