package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	. "github.com/runatlantis/atlantis/testing"
)

// TestQueuePage_BehindUpstreamsBasicAuth serves the page through upstream's
// own middleware with --web-basic-auth on: the page and its stylesheets want
// the credentials like upstream's locks page, and the JSON API, under /api/
// like upstream's, wants the API token instead.
func TestQueuePage_BehindUpstreamsBasicAuth(t *testing.T) {
	userConfig := testUserConfig(t)
	userConfig.WebBasicAuth = true
	userConfig.WebUsername = "atlantis"
	userConfig.WebPassword = "s3cret"
	srv, _ := startQueueServer(t, userConfig)
	web := httptest.NewServer(upstreamHandler(srv))
	defer web.Close()

	get := func(path string, header func(*http.Request)) (int, string) {
		t.Helper()
		req, err := http.NewRequest("GET", web.URL+path, nil)
		Ok(t, err)
		header(req)
		resp, err := http.DefaultClient.Do(req)
		Ok(t, err)
		defer resp.Body.Close() // nolint: errcheck
		body, err := io.ReadAll(resp.Body)
		Ok(t, err)
		return resp.StatusCode, string(body)
	}
	none := func(*http.Request) {}
	wrong := func(r *http.Request) { r.SetBasicAuth("atlantis", "guess") }
	right := func(r *http.Request) { r.SetBasicAuth("atlantis", "s3cret") }
	token := func(r *http.Request) { r.Header.Set("X-Atlantis-Token", "api-secret") }

	for _, path := range []string{"/queue", "/", "/static/css/skeleton.css"} {
		code, _ := get(path, none)
		Equals(t, http.StatusUnauthorized, code)
		code, _ = get(path, wrong)
		Equals(t, http.StatusUnauthorized, code)
		code, _ = get(path, right)
		Equals(t, http.StatusOK, code)
	}
	_, page := get("/queue", right)
	Assert(t, strings.Contains(page, "Lock queue"), "not the queue page:\n%s", page)
	_, index := get("/", right)
	Assert(t, strings.Contains(index, `href="/queue"`), "no queue link on the index:\n%s", index)

	code, _ := get("/api/locks/queue-status", none)
	Equals(t, http.StatusUnauthorized, code)
	code, _ = get("/api/locks/queue-status", token)
	Equals(t, http.StatusOK, code)
}

// TestQueuePage_Rows lays a lock out on as many rows as pulls wait for it,
// one row for a lock nobody waits for, and escapes what pulls carry.
func TestQueuePage_Rows(t *testing.T) {
	since := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	expires := since.Add(2 * time.Hour)
	status := QueueStatus{QueueEnabled: true, Locks: []LockQueueStatus{
		{Key: "org/repo/a/default/", Repo: "org/repo", Path: "a", Workspace: "default",
			Holder: &LockHolderStatus{PullNumber: 5, PullURL: "https://example.com/5", User: "dave"}, Queue: []QueuedPullStatus{}},
		{Key: "org/repo/b/staging/infra", Repo: "org/repo", Path: "b", Workspace: "staging", ProjectName: "infra",
			Queue: []QueuedPullStatus{
				{Position: 1, PullNumber: 9, PullURL: "javascript:alert(1)", User: "<carol>", Priority: "high",
					WaitingSeconds: 125, WaitingSince: &since, ExpiresAt: &expires},
				{Position: 2, PullNumber: 8, User: "bob", Priority: "normal", Synchronous: true},
			}},
	}, Commands: []RunningCommandStatus{
		{Repo: "org/repo", PullNumber: 9, Command: "atlantis apply -p <infra>", Replica: "atlantis-1:4141", RunningSince: since, RunningSeconds: 75},
	}}
	p := &queuePage{
		read:     func(context.Context, time.Time) (QueueStatus, error) { return status, nil },
		lockURL:  func(key string) string { return "/lock?id=" + key },
		basePath: "/base",
	}
	d := p.data(status)
	Equals(t, 3, len(d.Rows))
	Equals(t, queuePageRow{First: true, Span: 1, Lock: "org/repo: a / default", LockURL: "/lock?id=org/repo/a/default/",
		Holder: &queuePagePull{Number: 5, URL: "https://example.com/5", User: "dave"}}, d.Rows[0])
	Equals(t, true, d.Rows[1].First)
	Equals(t, 2, d.Rows[1].Span)
	Equals(t, "org/repo: b / staging / infra", d.Rows[1].Lock)
	Assert(t, d.Rows[1].Holder == nil, "a free lock has a holder")
	Equals(t, "2m5s", d.Rows[1].Entry.Waiting)
	Equals(t, "2025-03-04 07:06:07", d.Rows[1].Entry.Expires)
	Equals(t, false, d.Rows[2].First)
	Equals(t, "never", d.Rows[2].Entry.Expires)
	Equals(t, "unknown", d.Rows[2].Entry.Waiting)

	rec := getPage(p, "/queue")
	Equals(t, http.StatusOK, rec.Code)
	html := rec.Body.String()
	Assert(t, strings.Contains(html, `href="/base/static/css/skeleton.css"`), "stylesheet not under the base path")
	Assert(t, strings.Contains(html, `id="back-to-locks" href="/base/"`), "no link back to the index")
	Assert(t, !strings.Contains(html, "javascript:alert"), "unsafe pull URL rendered as a link")
	Assert(t, strings.Contains(html, "&lt;carol&gt;"), "user name not escaped")
	Assert(t, !strings.Contains(html, `id="queue-off"`), "queue-off note with the queue on")
	Equals(t, []queuePageCommand{{Pull: "org/repo#9", Command: "atlantis apply -p <infra>", Replica: "atlantis-1:4141", Running: "1m15s", Since: "2025-03-04 05:06:07"}}, d.Commands)
	Assert(t, strings.Contains(html, "<code>atlantis apply -p &lt;infra&gt;</code>"), "the running command is not shown, escaped:\n%s", html)
	Assert(t, !strings.Contains(html, `id="no-commands"`), "no-commands note while a command runs")
}

func TestQueuePage_QueueOffAndErrors(t *testing.T) {
	off := &queuePage{
		read: func(context.Context, time.Time) (QueueStatus, error) {
			return QueueStatus{Locks: []LockQueueStatus{}}, nil
		},
		lockURL: func(string) string { return "" },
	}
	rec := getPage(off, "/queue")
	Equals(t, http.StatusOK, rec.Code)
	Assert(t, strings.Contains(rec.Body.String(), `id="queue-off"`), "no note that the queue is off")
	Assert(t, strings.Contains(rec.Body.String(), "No locks found."), "no placeholder without locks")
	Assert(t, strings.Contains(rec.Body.String(), `id="no-commands"`), "no placeholder without running commands")

	failing := &queuePage{read: func(context.Context, time.Time) (QueueStatus, error) {
		return QueueStatus{}, errors.New("reading the lock queues: redis down")
	}}
	rec = getPage(failing, "/queue")
	Equals(t, http.StatusServiceUnavailable, rec.Code)
	Assert(t, strings.Contains(rec.Body.String(), "redis down"), "the error is not named: %s", rec.Body)
}
