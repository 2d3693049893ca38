package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1" // nolint: gosec
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"hash"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// How FuzzDeliveryDeduper signs a request.
const (
	signValid  = iota // with testSecret, as the host does
	signWrong         // with another secret
	signFuzzed        // the fuzzed signature header as it is
	signNone          // no signature header
	signModes
)

// FuzzDeliveryDeduper sends arbitrary webhooks, as one host or a mix of
// hosts' headers, signed or not, twice through the deduper in front of a
// stand-in for upstream, on a real Redis, and checks:
//   - nothing panics, and upstream gets every request it gets with its body
//     whole;
//   - a request claims a delivery only when it carries the webhook secret's
//     own signature (or GitLab token), checked here apart from upstream's
//     validators, and only when its host has a secret;
//   - a request that claims nothing stores nothing and reaches upstream each
//     time; one that claims reaches it once, and its copy is ignored;
//   - the same request always names the same delivery, and GitHub's and
//     Gitea's deliveries are named by their signed body, whatever their ID.
func FuzzDeliveryDeduper(f *testing.F) {
	seeds := []struct {
		host       uint8
		event, id  string
		body       string
		sign       uint8
		signature  string
		secretless uint8
	}{
		{0, "issue_comment", guid1, `{"action":"created"}`, signValid, "", 0},
		{0, "pull_request", "d-1", `{"action":"opened"}`, signValid, "", 0},
		{0, "issue_comment", guid1, `payload=%7B%7D`, signFuzzed, "sha1=00", 0},
		{0, "push", guid2, `{}`, signWrong, "", 0},
		{0, "issue_comment", guid1, `{}`, signValid, "", 1},
		{1, "Merge Request Hook", guid1, gitlabMR, signValid, "", 0},
		{1, "Note Hook", "", gitlabNote, signValid, "", 0},
		{1, "Merge Request Hook", guid2, gitlabMR2, signFuzzed, testSecret + " ", 0},
		{1, "Merge Request Hook", guid2, gitlabMR2, signValid, "", 2},
		{2, "pull_request_comment", guid3, `{"action":"created","comment":{"id":1}}`, signValid, "", 0},
		{2, "pull_request_sync", guid1, `{}`, signFuzzed, "ZZ", 0},
		{3, "pull_request", guid2, `{"action":"opened"}`, signValid, "", 4},
		{3, "issue_comment", strings.ToUpper(guid2), `{"a":1}`, signNone, "", 0},
		{4, "issue_comment", guid1, `{}`, signValid, "", 0},
	}
	for _, s := range seeds {
		f.Add(s.host, s.event, s.id, []byte(s.body), s.sign, s.signature, "application/json", s.secretless)
	}
	f.Add(uint8(0), "issue_comment", guid1, []byte("payload=%7B%7D"), uint8(signValid), "", "application/x-www-form-urlencoded", uint8(0))
	f.Add(uint8(0), "issue_comment", guid1, []byte("{}"), uint8(signValid), "", "application/json; charset=\"", uint8(0))

	ctx := context.Background()
	client := redistest.Start(f).Client(f)

	f.Fuzz(func(t *testing.T, host uint8, event, id string, body []byte, sign uint8, signature, contentType string, secretless uint8) {
		for _, v := range []string{event, id, signature, contentType} {
			if !sendable(v) {
				return // no HTTP server hands such a header to a handler
			}
		}
		// Bit i of secretless leaves the i-th source (Gitea, GitHub,
		// GitLab) without a webhook secret.
		var secrets webhookSecrets
		for i, s := range []*[]byte{&secrets.gitea, &secrets.github, &secrets.gitlab} {
			if secretless&(1<<i) == 0 {
				*s = []byte(testSecret)
			}
		}
		request := func() *http.Request {
			return fuzzedWebhook(host%5, event, id, body, sign%signModes, signature, contentType)
		}
		Ok(t, client.FlushDB(ctx).Err())
		received := 0
		d := &deliveryDeduper{
			next: func(w http.ResponseWriter, r *http.Request) {
				got, err := io.ReadAll(r.Body)
				Ok(t, err)
				Assert(t, bytes.Equal(body, got), "upstream got another body than was sent")
				received++
				w.WriteHeader(http.StatusAccepted)
			},
			sources: upstreamDeliverySources(secrets),
			client:  client,
			logger:  logging.NewNoopLogger(t),
		}

		r := request()
		src := d.sourceFor(r)
		claims := false
		if src != nil && src.dedupes(r) {
			dl, ok := src.identify(r, body)
			again, okAgain := src.identify(request(), body)
			Equals(t, ok, okAgain)
			Equals(t, dl, again)
			claims = ok && deliveryIDPattern.MatchString(dl.id)
			if ok {
				Assert(t, authentic(src.host, r, body), "%s: an unsigned request is accepted: %v", src.host, r.Header)
				if src.host != "GitLab" {
					other := request()
					other.Header.Set(dl.header, guid3)
					renamed, _ := src.identify(other, body)
					Equals(t, dl.record, renamed.record)
				}
			}
		}

		var codes []int
		for range 2 {
			rec := httptest.NewRecorder()
			d.ServeHTTP(rec, request())
			codes = append(codes, rec.Code)
		}
		records, err := client.ZCard(ctx, d.recordsKey()).Result()
		Ok(t, err)
		if claims {
			Equals(t, []int{http.StatusAccepted, http.StatusOK}, codes)
			Equals(t, 1, received)
			Equals(t, int64(1), records)
		} else {
			Equals(t, []int{http.StatusAccepted, http.StatusAccepted}, codes)
			Equals(t, 2, received)
			Equals(t, int64(0), records)
		}
	})
}

// fuzzedWebhook is a POST to /events with host's headers: 0 GitHub, 1
// GitLab, 2 Gitea, 3 Gitea with GitHub's headers too (as Gitea sends them),
// 4 none of them.
func fuzzedWebhook(host uint8, event, id string, body []byte, sign uint8, signature, contentType string) *http.Request {
	r := httptest.NewRequest("POST", "/events", bytes.NewReader(body))
	r.Header.Set("Content-Type", contentType)
	secret := testSecret
	if sign == signWrong {
		secret = "not-" + testSecret
	}
	setSignature := func(header, prefix string) {
		switch sign {
		case signValid, signWrong:
			r.Header.Set(header, prefix+hmacHex(secret, string(body)))
		case signFuzzed:
			r.Header.Set(header, signature)
		}
	}
	switch host {
	case 0:
		r.Header.Set(githubEventHeader, event)
		r.Header.Set(githubDeliveryHeader, id)
		setSignature("X-Hub-Signature-256", "sha256=")
	case 1:
		r.Header.Set(gitlabEventHeader, event)
		r.Header.Set(gitlabIdempotencyHeader, id)
		r.Header.Set(gitlabEventUUIDHeader, guid3)
		switch sign {
		case signValid, signWrong:
			r.Header.Set("X-Gitlab-Token", secret)
		case signFuzzed:
			r.Header.Set("X-Gitlab-Token", signature)
		}
	case 2, 3:
		r.Header.Set(giteaEventHeader, event)
		r.Header.Set(giteaEventTypeHeader, event)
		r.Header.Set(giteaDeliveryHeader, id)
		setSignature(giteaSignatureHeader, "")
		if host == 3 {
			r.Header.Set(githubEventHeader, event)
			r.Header.Set(githubDeliveryHeader, id)
			setSignature("X-Hub-Signature-256", "sha256=")
		}
	}
	return r
}

// sendable says whether an HTTP server passes v on as a header value: it
// refuses control characters other than tab.
func sendable(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// authentic checks r's signature or token against testSecret, as each host
// makes it, apart from upstream's validators.
func authentic(host string, r *http.Request, body []byte) bool {
	switch host {
	case "GitLab":
		return r.Header.Get("X-Gitlab-Token") == testSecret
	case "Gitea":
		return macMatches(sha256.New, r.Header.Get(giteaSignatureHeader), body)
	case "GitHub":
		signature := r.Header.Get("X-Hub-Signature-256")
		if signature == "" {
			signature = r.Header.Get("X-Hub-Signature")
		}
		for prefix, h := range map[string]func() hash.Hash{"sha1=": sha1.New, "sha256=": sha256.New, "sha512=": sha512.New} {
			if hexMAC, ok := strings.CutPrefix(signature, prefix); ok {
				return macMatches(h, hexMAC, body)
			}
		}
	}
	return false
}

func macMatches(h func() hash.Hash, hexMAC string, body []byte) bool {
	got, err := hex.DecodeString(hexMAC)
	if err != nil {
		return false
	}
	mac := hmac.New(h, []byte(testSecret))
	mac.Write(body) // nolint: errcheck
	return hmac.Equal(got, mac.Sum(nil))
}
