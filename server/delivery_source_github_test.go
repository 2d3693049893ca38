package server

import (
	"testing"

	"github.com/google/go-github/v88/github"
	"github.com/runatlantis/atlantis/server/events/models"
)

// TestGithubDedupedEventsAreUpstreams guards githubDedupedEvents: upstream
// answers every other GitHub event type "Ignoring unsupported event", so not
// recording those loses nothing. When this fails, upstream acts on a new
// event type: add it to githubDedupedEvents.
func TestGithubDedupedEventsAreUpstreams(t *testing.T) {
	upstream := upstreamEvents(t, models.Github)
	for _, event := range github.MessageTypes() {
		h := webhook{event: event, id: guid1, body: "{}"}
		if claims(h) {
			continue
		}
		t.Run(event, func(t *testing.T) { assertUpstreamIgnores(t, upstream, h) })
	}
}
