package server

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// chromiumPath finds Debian's chromium. A missing browser fails the test, as
// a missing redis-server does: scripts/install-deps.sh installs it. Like the
// e2e suite, the browser test is skipped under -short only.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("the browser test runs without -short, like the e2e suite")
	}
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the queue page test needs headless Chromium and found none on PATH (%v): run scripts/install-deps.sh, or apt-get install chromium", err)
	}
	return path
}

// testArtifactDir is where a test leaves files for a person to look at:
// $ATLANTIS_TEST_ARTIFACTS when set (kept), else the test's temporary
// directory (removed when the test ends).
func testArtifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("ATLANTIS_TEST_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	Ok(t, os.MkdirAll(dir, 0o755))
	return dir
}

// newBrowser starts headless Chromium for the test. --no-sandbox because
// tests run as root here, which Chromium's sandbox refuses.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 800),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithErrorf(t.Logf))
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	Ok(t, chromedp.Do(ctx)) // starts the browser, tied to ctx and not to a timeout
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestQueuePage_InChromium loads /queue in real headless Chromium, through
// upstream's middleware, with and without web basic auth: a held lock and
// two pulls of different priority waiting for it, the lower one queued
// first. It reads the table as a person sees it, follows the links to the
// index and back, and saves a screenshot.
func TestQueuePage_InChromium(t *testing.T) {
	for _, basicAuth := range []bool{false, true} {
		name := "no basic auth"
		if basicAuth {
			name = "basic auth"
		}
		t.Run(name, func(t *testing.T) {
			ctx := newBrowser(t)
			userConfig := testUserConfig(t)
			if basicAuth {
				userConfig.WebBasicAuth = true
				userConfig.WebUsername = "atlantis"
				userConfig.WebPassword = "s3cret"
			}
			srv, _ := startQueueServer(t, userConfig)
			f := newQueueFixture(t, srv, "dir")
			running, err := srv.leases.Acquire(t.Context(), enhanced.PullRef{RepoFullName: "org/repo", Num: 7}, "atlantis apply -p dir")
			Ok(t, err)
			defer running.Release()
			web := httptest.NewServer(upstreamHandler(srv))
			defer web.Close()

			if basicAuth {
				// Chromium sends it with every request, the stylesheets too.
				credentials := base64.StdEncoding.EncodeToString([]byte("atlantis:s3cret"))
				_, err := chromedp.Call(ctx, network.Enable, network.EnableParams{})
				Ok(t, err)
				_, err = chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
					Headers: network.Headers{"Authorization": "Basic " + credentials},
				})
				Ok(t, err)
			}
			resp, err := chromedp.Run(ctx, chromedp.NavigateResponse(web.URL+"/queue"))
			Ok(t, err)
			Equals(t, int64(http.StatusOK), resp.Status)
			Ok(t, chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#queue"))))

			rows, err := chromedp.Run(ctx, chromedp.Evaluate[[][]string](
				`Array.from(document.querySelectorAll('#queue tbody tr')).map(tr => Array.from(tr.cells).map(c => c.innerText.trim()))`))
			Ok(t, err)
			expires := func(at time.Time) string { return at.Format(queueTimeFormat) }
			waiting := regexp.MustCompile(`^([0-9]+m)?[0-9]+s$`)
			Equals(t, 2, len(rows))
			Equals(t, 7, len(rows[0]))
			Equals(t, []string{"org/repo: dir / default", "#7 alice", "1", "#9 carol", "high"}, rows[0][:5])
			Assert(t, waiting.MatchString(rows[0][5]), "waiting time %q", rows[0][5])
			Equals(t, expires(f.high.Expires), rows[0][6])
			// The lock and holder cells span both rows.
			Equals(t, 5, len(rows[1]))
			Equals(t, []string{"2", "#8 bob", "low"}, rows[1][:3])
			Assert(t, waiting.MatchString(rows[1][3]), "waiting time %q", rows[1][3])
			Equals(t, expires(f.low.Expires), rows[1][4])

			commands, err := chromedp.Run(ctx, chromedp.Evaluate[[][]string](
				`Array.from(document.querySelectorAll('#commands tbody tr')).map(tr => Array.from(tr.cells).map(c => c.innerText.trim()))`))
			Ok(t, err)
			Equals(t, 1, len(commands))
			Equals(t, []string{"org/repo#7", "atlantis apply -p dir", replicaName(userConfig.Port)}, commands[0][:3])
			Assert(t, waiting.MatchString(commands[0][3]), "running for %q", commands[0][3])

			// Upstream's stylesheet reached the page: skeleton.css sets the font.
			font, err := chromedp.Run(ctx, chromedp.Evaluate[string](`getComputedStyle(document.body).fontFamily`))
			Ok(t, err)
			Assert(t, strings.Contains(font, "Raleway"), "upstream's stylesheets did not load: body font is %q", font)

			artifacts := testArtifactDir(t)
			screenshot := func(page string) {
				t.Helper()
				png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
				Ok(t, err)
				path := filepath.Join(artifacts, page+"-"+strings.ReplaceAll(name, " ", "-")+".png")
				Ok(t, os.WriteFile(path, png, 0o644))
				t.Logf("screenshot of the %s page: %s", page, path)
			}
			screenshot("queue")

			// Back to upstream's index, and from its link to the queue again.
			resp, err = chromedp.RunResponse(ctx, chromedp.Click(chromedp.ID("back-to-locks")))
			Ok(t, err)
			Equals(t, int64(http.StatusOK), resp.Status)
			heading, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#queue-link")))
			Ok(t, err)
			Equals(t, "Lock queue", heading)
			screenshot("index")
			resp, err = chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS("#queue-link a")))
			Ok(t, err)
			Equals(t, int64(http.StatusOK), resp.Status)
			location, err := chromedp.Run(ctx, chromedp.Location())
			Ok(t, err)
			Equals(t, web.URL+"/queue", location)
		})
	}
}
