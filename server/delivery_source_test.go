package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	events_controllers "github.com/runatlantis/atlantis/server/controllers/events"
	"github.com/runatlantis/atlantis/server/events/models"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"
	"github.com/uber-go/tally/v4"
)

// upstreamEvents is upstream's events controller for hosts, with testSecret
// as each host's webhook secret. It only gets as far as ignoring or refusing
// a request: anything it acts on needs dependencies it does not have.
func upstreamEvents(t *testing.T, hosts ...models.VCSHostType) *events_controllers.VCSEventsController {
	return &events_controllers.VCSEventsController{
		Logger:                       logging.NewNoopLogger(t),
		Scope:                        tally.NoopScope,
		GithubRequestValidator:       &events_controllers.DefaultGithubRequestValidator{},
		GithubWebhookSecret:          []byte(testSecret),
		GitlabRequestParserValidator: &events_controllers.DefaultGitlabRequestParserValidator{},
		GitlabWebhookSecret:          []byte(testSecret),
		GiteaWebhookSecret:           []byte(testSecret),
		SupportedVCSHosts:            hosts,
	}
}

// assertUpstreamIgnores checks that upstream answers h 200 with one of its
// "Ignoring ..." answers, so a copy of h is harmless and not recording it
// loses nothing.
func assertUpstreamIgnores(t *testing.T, upstream *events_controllers.VCSEventsController, h webhook) {
	t.Helper()
	rec := httptest.NewRecorder()
	upstream.Post(rec, h.request())
	Equals(t, http.StatusOK, rec.Code)
	Assert(t, strings.HasPrefix(rec.Body.String(), "Ignoring "), "upstream acts on %+v: %s", h, rec.Body.String())
}

// claims reports whether the deduper, with testSecret for every host, would
// claim h's delivery: its host's source dedupes it and accepts it.
func claims(h webhook) bool {
	r := h.request()
	d := &deliveryDeduper{sources: upstreamDeliverySources(webhookSecrets{github: []byte(testSecret), gitlab: []byte(testSecret), gitea: []byte(testSecret)})}
	src := d.sourceFor(r)
	if src == nil || !src.dedupes(r) {
		return false
	}
	dl, ok := src.identify(r, []byte(h.body))
	return ok && deliveryIDPattern.MatchString(dl.id)
}

// TestDeliverySourcesRouteAsUpstream: a request goes to the source of the
// host whose handler upstream's Post hands it to, whatever mix of hosts'
// event headers it carries (Gitea sends GitHub's too). Upstream without any
// host configured names the host it picked in its refusal.
func TestDeliverySourcesRouteAsUpstream(t *testing.T) {
	upstream := upstreamEvents(t)
	d := &deliveryDeduper{sources: upstreamDeliverySources(webhookSecrets{})}
	headers := []struct{ name, host string }{
		{giteaEventHeader, "Gitea"},
		{githubEventHeader, "GitHub"},
		{gitlabEventHeader, "GitLab"},
	}
	for mask := 0; mask < 1<<len(headers); mask++ {
		req := httptest.NewRequest("POST", "/events", strings.NewReader("{}"))
		var names []string
		for i, h := range headers {
			if mask&(1<<i) != 0 {
				req.Header.Set(h.name, "x")
				names = append(names, h.name)
			}
		}
		t.Run(strings.Join(append(names, "headers"), " "), func(t *testing.T) {
			rec := httptest.NewRecorder()
			upstream.Post(rec, req)
			want := ""
			for _, h := range headers {
				if strings.Contains(rec.Body.String(), "not configured to support "+h.host+"\n") {
					want = h.host
				}
			}
			got := ""
			if src := d.sourceFor(req); src != nil {
				got = src.host
			}
			Equals(t, want, got)
		})
	}
}
