package server

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	upstream "github.com/runatlantis/atlantis/server"
	. "github.com/runatlantis/atlantis/testing"
)

func getPage(h http.Handler, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	return rec
}

// TestIndexLinkAnchor fails when upstream's index page no longer has the
// heading the queue link is put after: update indexLinkAnchor in
// index_link.go to this upstream version's locks heading.
func TestIndexLinkAnchor(t *testing.T) {
	srv, err := upstream.NewServer(testUserConfig(t), testConfig())
	Ok(t, err)
	defer srv.LocksController.Database.Close() // nolint: errcheck
	srv.SetupRoutes()
	rec := getPage(srv.Router, "/")
	Equals(t, http.StatusOK, rec.Code)
	Assert(t, strings.Count(rec.Body.String(), indexLinkAnchor) == 1,
		"UPSTREAM INDEX CHANGED: upstream's index page has %d copies of indexLinkAnchor %q, want exactly one; "+
			"the queue link is missing from it until server/index_link.go names its new locks heading",
		strings.Count(rec.Body.String(), indexLinkAnchor), indexLinkAnchor)
}

// TestIndexLink_QueueOn serves upstream's index with the link under its locks
// heading and nothing else changed, under upstream's base path.
func TestIndexLink_QueueOn(t *testing.T) {
	for _, basePath := range []string{"", "/atlantis"} {
		t.Run(fmt.Sprintf("base path %q", basePath), func(t *testing.T) {
			userConfig := testUserConfig(t)
			userConfig.AtlantisURL += basePath
			srv, _ := startQueueServer(t, userConfig)
			lockHeld(t, srv, fixtureLock("dir", 7, "alice"))

			rec := getPage(srv.Router, "/")
			Equals(t, http.StatusOK, rec.Code)
			link := `<p id="queue-link" style="text-align: center"><a href="` + basePath + `/queue">Lock queue</a></p>`
			page := rec.Body.String()
			Assert(t, strings.Contains(page, indexLinkAnchor+link), "no queue link after the locks heading:\n%s", page)

			original := httptest.NewRecorder()
			srv.Index(original, httptest.NewRequest("GET", "/", nil))
			Equals(t, original.Body.String(), strings.Replace(page, link, "", 1))
		})
	}
}

// TestIndexLink_QueueOff leaves upstream's index alone.
func TestIndexLink_QueueOff(t *testing.T) {
	for name, cfg := range queueOffConfigs() {
		t.Run(name, func(t *testing.T) {
			srv, _ := startTestServer(t, testUserConfig(t), cfg)
			rec := getPage(srv.Router, "/")
			Equals(t, http.StatusOK, rec.Code)
			Assert(t, !strings.Contains(rec.Body.String(), "queue-link"), "queue link on the index with the queue off")
		})
	}
}

// TestIndexLink_FallsBackToUpstreamsPage sends the page unchanged when the
// anchor is missing (warning once) or when the index answers an error.
func TestIndexLink_FallsBackToUpstreamsPage(t *testing.T) {
	cases := []struct {
		description string
		status      int
		body        string
		expWarnings int
	}{
		{"no anchor", http.StatusOK, "<html><p>Locks moved</p></html>", 1},
		{"error page", http.StatusServiceUnavailable, "Could not retrieve locks: " + indexLinkAnchor, 0},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			warnings := 0
			h := &indexWithQueueLink{
				index: func(w http.ResponseWriter, _ *http.Request) {
					w.Header().Set("X-Upstream", "kept")
					w.WriteHeader(c.status)
					fmt.Fprint(w, c.body)
				},
				link:       []byte("<a>queue</a>"),
				warnMissed: func() { warnings++ },
			}
			for range 2 {
				rec := getPage(h, "/")
				Equals(t, c.status, rec.Code)
				Equals(t, c.body, rec.Body.String())
				Equals(t, "kept", rec.Header().Get("X-Upstream"))
			}
			Equals(t, c.expWarnings, warnings)
		})
	}
}

func TestInsertAfter(t *testing.T) {
	out, ok := insertAfter([]byte("a<h>b<h>c"), []byte("<h>"), []byte("X"))
	Assert(t, ok, "anchor not found")
	Equals(t, "a<h>Xb<h>c", string(out))
	page := []byte("abc")
	out, ok = insertAfter(page, []byte("<h>"), []byte("X"))
	Assert(t, !ok && bytes.Equal(out, page), "page changed without an anchor: %q", out)
}
