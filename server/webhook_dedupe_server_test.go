package server

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// TestRedisServer_DedupesEveryHostsWebhooks: the real server, configured for
// GitHub, GitLab and Gitea with a webhook secret each, hands each host's
// webhook to upstream once and ignores its copy. The events are ones
// upstream answers without calling the host (a non-command comment, an
// edited comment), so a stand-in answers only the version checks that
// upstream's GitLab and Gitea clients make at start.
func TestRedisServer_DedupesEveryHostsWebhooks(t *testing.T) {
	vcs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v4/version":
			fmt.Fprint(w, `{"version":"17.5.0","revision":"0"}`) // nolint: errcheck
		case "/api/v1/version":
			fmt.Fprint(w, `{"version":"1.22.0"}`) // nolint: errcheck
		default:
			t.Errorf("unexpected call to the VCS host: %s %s", r.Method, r.URL)
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(vcs.Close)
	redisSrv := redistest.Start(t)
	userConfig := testUserConfig(t)
	userConfig.GithubWebhookSecret = "gh-secret"
	userConfig.GitlabUser, userConfig.GitlabToken, userConfig.GitlabHostname = "bot", "token", vcs.URL
	userConfig.GitlabWebhookSecret = "gl-secret"
	userConfig.GiteaUser, userConfig.GiteaToken, userConfig.GiteaBaseURL = "bot", "token", vcs.URL
	userConfig.GiteaWebhookSecret = "gt-secret"
	cfg := redisConfig(redisSrv.Addr)
	srv, _ := startTestServer(t, userConfig, cfg)

	repo := fmt.Sprintf(`{"path_with_namespace":"org/repo","git_http_url":"%s/org/repo.git"}`, vcs.URL)
	cases := []struct {
		description string
		delivery    webhook
		expAnswer   string // upstream's answer to the first copy
	}{
		{
			"GitHub",
			webhook{sign: "gh-secret", id: guid1, body: `{"action":"edited"}`},
			"Ignoring comment event since action was not created",
		},
		{
			"GitLab",
			webhook{host: hostGitLab, sign: "gl-secret", event: "Note Hook", id: guid1, body: fmt.Sprintf(
				`{"object_kind":"note","user":{"username":"alice"},"project":%s,"object_attributes":{"id":5,"note":"hello","noteable_type":"MergeRequest"},"merge_request":{"iid":1,"source":%s}}`,
				repo, repo)},
			"Ignoring non-command comment",
		},
		{
			"Gitea",
			webhook{host: hostGitea, sign: "gt-secret", id: guid1, body: fmt.Sprintf(
				`{"action":"created","comment":{"id":1,"body":"hello","user":{"login":"alice"}},"issue":{"number":1},"repository":{"full_name":"org/repo","clone_url":"%s/org/repo.git"}}`,
				vcs.URL)},
			"Ignoring non-command comment",
		},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			var answers []string
			for i := 0; i < 2; i++ {
				rec := httptest.NewRecorder()
				srv.Router.ServeHTTP(rec, c.delivery.request())
				Equals(t, http.StatusOK, rec.Code)
				answers = append(answers, rec.Body.String())
			}
			Assert(t, strings.HasPrefix(answers[0], c.expAnswer), "upstream answered %q", answers[0])
			Equals(t, "Ignoring delivery "+guid1+": already handled\n", answers[1])
		})
	}
	records := (&deliveryDeduper{keyPrefix: cfg.Redis.KeyPrefix}).recordsKey()
	Equals(t, int64(len(cases)), redisSrv.Client(t).ZCard(context.Background(), records).Val())
}
