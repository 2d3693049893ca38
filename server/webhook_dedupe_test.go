package server

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

const (
	guid1      = "0d4f0b70-3a6c-11ef-8a4e-2f1c5b1e9a01"
	guid2      = "0d4f0b70-3a6c-11ef-8a4e-2f1c5b1e9a02"
	guid3      = "0d4f0b70-3a6c-11ef-8a4e-2f1c5b1e9a03"
	testSecret = "s3cret"
	// failBody makes the stand-in for upstream answer 500.
	failBody = `{"action":"created","fail":true}`
)

// The hosts a test webhook comes from.
const (
	hostGitHub = ""
	hostGitLab = "gitlab"
	hostGitea  = "gitea"
)

// webhook is one request a test sends.
type webhook struct {
	host string // hostGitHub, hostGitLab or hostGitea
	// sign is the secret the request is signed with, or for GitLab the token
	// it sends; "" means testSecret.
	sign string
	// event is the event type: X-GitHub-Event, X-Gitlab-Event or
	// X-Gitea-Event-Type; "" means the host's usual one: issue_comment,
	// Merge Request Hook, pull_request_comment.
	event string
	// id is the delivery ID: X-GitHub-Delivery, Idempotency-Key (not sent
	// when empty) or X-Gitea-Delivery.
	id string
	// eventUUID is GitLab's X-Gitlab-Event-UUID, not sent when empty.
	eventUUID string
	body      string
}

func (h webhook) request() *http.Request {
	req := httptest.NewRequest("POST", "/events", strings.NewReader(h.body))
	req.Header.Set("Content-Type", "application/json")
	secret := h.sign
	if secret == "" {
		secret = testSecret
	}
	switch h.host {
	case hostGitLab:
		req.Header.Set(gitlabEventHeader, cmp.Or(h.event, "Merge Request Hook"))
		req.Header.Set("X-Gitlab-Token", secret)
		if h.id != "" {
			req.Header.Set(gitlabIdempotencyHeader, h.id)
		}
		if h.eventUUID != "" {
			req.Header.Set(gitlabEventUUIDHeader, h.eventUUID)
		}
	case hostGitea:
		event := cmp.Or(h.event, "pull_request_comment")
		req.Header.Set(giteaEventTypeHeader, event)
		req.Header.Set(giteaDeliveryHeader, h.id)
		req.Header.Set(giteaSignatureHeader, hmacHex(secret, h.body))
		// Gitea names the event more coarsely in X-Gitea-Event, and sends
		// GitHub's headers too; upstream goes by X-Gitea-Event-Type.
		coarse := map[string]string{"pull_request_comment": "issue_comment", "pull_request_sync": "pull_request"}
		req.Header.Set(giteaEventHeader, cmp.Or(coarse[event], event))
		req.Header.Set(githubEventHeader, cmp.Or(coarse[event], event))
		req.Header.Set(githubDeliveryHeader, h.id)
		req.Header.Set("X-Hub-Signature-256", "sha256="+hmacHex(secret, h.body))
	default:
		req.Header.Set(githubEventHeader, cmp.Or(h.event, "issue_comment"))
		req.Header.Set(githubDeliveryHeader, h.id)
		req.Header.Set("X-Hub-Signature-256", "sha256="+hmacHex(secret, h.body))
	}
	return req
}

// deliveryID is the ID the deduper reads from h.
func (h webhook) deliveryID() string {
	if h.host == hostGitLab && h.id == "" {
		return h.eventUUID
	}
	return h.id
}

func hmacHex(secret, body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	return hex.EncodeToString(mac.Sum(nil))
}

// githubRecord, gitlabRecord, gitlabUUIDRecord and giteaRecord are the
// records each host's deliveries are stored under.
func githubRecord(event, body string) string { return deliveryRecord([]byte(body), event) }

func gitlabRecord(event, key string) string {
	return deliveryRecord(nil, "gitlab", event, gitlabIdempotencyHeader, key)
}

func gitlabUUIDRecord(event, uuid, body string) string {
	return deliveryRecord([]byte(body), "gitlab", event, gitlabEventUUIDHeader, uuid)
}

func giteaRecord(event, body string) string { return deliveryRecord([]byte(body), "gitea", event) }

// dedupeFixture is a deduper for every host in front of a stand-in for
// upstream's handler that records what reached it.
type dedupeFixture struct {
	d        *deliveryDeduper
	mu       sync.Mutex
	received []string
	logger   logging.SimpleLogging
}

func newDedupeFixture(t *testing.T, client redis.UniversalClient, secret string) *dedupeFixture {
	f := &dedupeFixture{logger: logging.NewNoopLogger(t).WithHistory()}
	f.d = &deliveryDeduper{
		next: func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			f.mu.Lock()
			f.received = append(f.received, string(b))
			f.mu.Unlock()
			if string(b) == failBody {
				w.WriteHeader(http.StatusInternalServerError)
				return
			}
			w.WriteHeader(http.StatusAccepted)
		},
		sources:   upstreamDeliverySources(webhookSecrets{github: []byte(secret), gitlab: []byte(secret), gitea: []byte(secret)}),
		client:    client,
		keyPrefix: "pfx:",
		logger:    f.logger,
	}
	return f
}

// send delivers h and returns the status and body answered.
func (f *dedupeFixture) send(h webhook) (int, string) {
	rec := httptest.NewRecorder()
	f.d.ServeHTTP(rec, h.request())
	return rec.Code, rec.Body.String()
}

func (f *dedupeFixture) receivedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.received)
}

// redisNowMs is the Redis server's clock, which the records' expiries use.
func redisNowMs(t *testing.T, client redis.UniversalClient) int64 {
	t.Helper()
	now, err := client.Time(context.Background()).Result()
	Ok(t, err)
	return now.UnixMilli()
}

// waitRedisPast waits until the Redis server's clock is past ms.
func waitRedisPast(t *testing.T, client redis.UniversalClient, ms int64) {
	t.Helper()
	if wait := time.Duration(ms-redisNowMs(t, client)) * time.Millisecond; wait > time.Minute {
		t.Fatalf("refusing to wait %s for the Redis clock", wait)
	}
	for redisNowMs(t, client) <= ms {
		time.Sleep(5 * time.Millisecond)
	}
}

// deliveryCase is one table row of the de-duplication tests.
type deliveryCase struct {
	description string
	noSecret    bool // the server has no webhook secret
	// before are sent first, and must reach upstream.
	before []webhook
	// then are sent next, in order.
	then []webhook
	// expCodes are the answers to then: 200 means ignored, anything else
	// came from upstream.
	expCodes   []int
	expRecords []string
	expLog     []string
}

// runDeliveryCases runs each case on a fresh Redis database and checks what
// reached upstream, the answers, the records left and the log.
func runDeliveryCases(t *testing.T, client redis.UniversalClient, cases []deliveryCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			ctx := context.Background()
			Ok(t, client.FlushAll(ctx).Err())
			secret := testSecret
			if c.noSecret {
				secret = ""
			}
			f := newDedupeFixture(t, client, secret)
			for _, h := range c.before {
				code, _ := f.send(h)
				Equals(t, http.StatusAccepted, code)
			}
			var codes []int
			for _, h := range c.then {
				n := f.receivedCount()
				code, answer := f.send(h)
				codes = append(codes, code)
				if code == http.StatusOK {
					Equals(t, n, f.receivedCount())
					Equals(t, fmt.Sprintf("Ignoring delivery %s: already handled\n", quoteIfMalformed(h.deliveryID())), answer)
				} else {
					Equals(t, n+1, f.receivedCount())
				}
			}
			Equals(t, c.expCodes, codes)

			records, err := client.ZRange(ctx, f.d.recordsKey(), 0, -1).Result()
			Ok(t, err)
			Assert(t, sameElements(c.expRecords, records), "records %v, want %v", records, c.expRecords)
			keys, err := client.DBSize(ctx).Result()
			Ok(t, err)
			Equals(t, int64(min(len(records), 1)), keys) // nothing besides the one set
			for _, line := range c.expLog {
				Assert(t, strings.Contains(f.logger.GetHistory(), line), "log lacks %q:\n%s", line, f.logger.GetHistory())
			}
			Assert(t, !strings.Contains(f.logger.GetHistory(), "\n[INFO] forged"), "an ID forged a log line:\n%s", f.logger.GetHistory())
		})
	}
}

func TestDeliveryDeduper(t *testing.T) {
	client := redistest.Start(t).Client(t)
	const body = `{"action":"created"}`
	const other = `{"action":"created","comment":{"id":2}}`
	long := strings.Repeat("x", 200)
	forged := "d-2\n[INFO] forged line"
	runDeliveryCases(t, client, []deliveryCase{
		{
			description: "a redelivery (same ID, same body) is ignored",
			before:      []webhook{{id: guid1, body: body}},
			then:        []webhook{{id: guid1, body: body}},
			expCodes:    []int{http.StatusOK},
			expRecords:  []string{githubRecord("issue_comment", body)},
			expLog:      []string{"GitHub delivery " + guid1 + " was already handled by a replica; ignoring this copy"},
		},
		{
			description: "the same signed body replayed under a fresh GUID is ignored and adds no record",
			before:      []webhook{{id: guid1, body: body}},
			then:        []webhook{{id: guid2, body: body}, {id: guid3, body: body}},
			expCodes:    []int{http.StatusOK, http.StatusOK},
			expRecords:  []string{githubRecord("issue_comment", body)},
		},
		{
			description: "the same signed body replayed under a malformed ID is ignored and adds no record",
			before:      []webhook{{id: guid1, body: body}},
			then:        []webhook{{id: "replay-1", body: body}},
			expCodes:    []int{http.StatusOK},
			expRecords:  []string{githubRecord("issue_comment", body)},
		},
		{
			description: "a different body under the same ID is handled",
			before:      []webhook{{id: guid1, body: body}},
			then:        []webhook{{id: guid1, body: other}},
			expCodes:    []int{http.StatusAccepted},
			expRecords:  []string{githubRecord("issue_comment", body), githubRecord("issue_comment", other)},
		},
		{
			description: "the same body as another event type is another delivery",
			before:      []webhook{{id: guid1, body: body}},
			then:        []webhook{{event: "pull_request", id: guid2, body: body}},
			expCodes:    []int{http.StatusAccepted},
			expRecords:  []string{githubRecord("issue_comment", body), githubRecord("pull_request", body)},
		},
		{
			description: "a signed request with a missing or non-GUID ID passes through and stores nothing",
			then: []webhook{
				{id: "d-1", body: body},
				{id: "d-1", body: other},
				{id: "", body: body},
				{id: long, body: body},
				{id: forged, body: other + " "},
				{id: strings.ToUpper(guid1) + "0", body: body},
			},
			expCodes: []int{http.StatusAccepted, http.StatusAccepted, http.StatusAccepted, http.StatusAccepted, http.StatusAccepted, http.StatusAccepted},
			expLog: []string{
				`X-GitHub-Delivery "d-1" is not a GUID as GitHub sends: handling this webhook without de-duplication`,
				`X-GitHub-Delivery "" is not a GUID`,
				fmt.Sprintf(`X-GitHub-Delivery %q... (%d bytes) is not a GUID`, long[:logValueMax], len(long)),
				`X-GitHub-Delivery "d-2\n[INFO] forged line" is not a GUID`,
			},
		},
		{
			description: "events upstream ignores are passed through and not recorded",
			then:        []webhook{{event: "push", id: guid1, body: body}, {event: "invented", id: guid1, body: body}},
			expCodes:    []int{http.StatusAccepted, http.StatusAccepted},
		},
		{
			description: "a bad signature goes to upstream to be rejected and claims nothing",
			then:        []webhook{{sign: "wrong", id: guid1, body: body}, {id: guid1, body: body}},
			expCodes:    []int{http.StatusAccepted, http.StatusAccepted},
			expRecords:  []string{githubRecord("issue_comment", body)},
		},
		{
			description: "a delivery upstream failed is forgotten, so its redelivery is handled",
			then:        []webhook{{id: guid1, body: failBody}, {id: guid1, body: failBody}},
			expCodes:    []int{http.StatusInternalServerError, http.StatusInternalServerError},
		},
		{
			description: "without a webhook secret nothing is de-duplicated",
			noSecret:    true,
			then:        []webhook{{sign: "x", id: guid1, body: body}, {sign: "x", id: guid1, body: body}},
			expCodes:    []int{http.StatusAccepted, http.StatusAccepted},
		},
	})
}

func quoteIfMalformed(id string) string {
	if deliveryIDPattern.MatchString(id) {
		return id
	}
	return quoteForLog(id)
}

func sameElements(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

// TestDeliveryRecordsCap: the set never holds more than the cap; the records
// evicted are those expiring soonest, so the newest deliveries stay.
func TestDeliveryRecordsCap(t *testing.T) {
	client := redistest.Start(t).Client(t)
	ctx := context.Background()
	const maxRecords = 3
	cases := []struct {
		description string
		deliveries  int
		expKept     []int // indexes of the deliveries whose records remain
	}{
		{"under the cap everything is kept", 2, []int{0, 1}},
		{"at the cap everything is kept", 3, []int{0, 1, 2}},
		{"past the cap the oldest are evicted", 7, []int{4, 5, 6}},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			Ok(t, client.FlushAll(ctx).Err())
			f := newDedupeFixture(t, client, testSecret)
			f.d.maxRecords = maxRecords
			var records []string
			for i := 0; i < c.deliveries; i++ {
				body := fmt.Sprintf(`{"action":"created","comment":{"id":%d}}`, i)
				records = append(records, githubRecord("issue_comment", body))
				// Expiries are in ms: give each delivery its own millisecond, so
				// which is newest is well defined.
				waitRedisPast(t, client, redisNowMs(t, client))
				code, _ := f.send(webhook{id: guid1, body: body})
				Equals(t, http.StatusAccepted, code)
				n, err := client.ZCard(ctx, f.d.recordsKey()).Result()
				Ok(t, err)
				Assert(t, n <= maxRecords, "%d records after delivery %d, cap %d", n, i, maxRecords)
			}
			var want []string
			for _, i := range c.expKept {
				want = append(want, records[i])
			}
			got, err := client.ZRange(ctx, f.d.recordsKey(), 0, -1).Result()
			Ok(t, err)
			Equals(t, want, got)
		})
	}

	// A claim made at the cap stands: it evicts a record rather than itself.
	claimed, err := (&deliveryDeduper{client: client, keyPrefix: "pfx:", maxRecords: maxRecords}).claim(ctx, "in-flight")
	Ok(t, err)
	Assert(t, claimed > 0, "claim at the cap was refused")
	n, err := client.ZCard(ctx, "pfx:atlantis:webhook-deliveries").Result()
	Ok(t, err)
	Equals(t, int64(maxRecords), n)
	_, err = client.ZScore(ctx, "pfx:atlantis:webhook-deliveries", "in-flight").Result()
	Ok(t, err)
}

// TestDeliveryClaimLapses: a claim is short until upstream handled the
// event. A replica that died after claiming (the claim is never confirmed)
// holds a redelivery off only until the claim lapses; a handled delivery is
// confirmed for 72 hours.
func TestDeliveryClaimLapses(t *testing.T) {
	client := redistest.Start(t).Client(t)
	ctx := context.Background()
	const body = `{"action":"created"}`
	record := githubRecord("issue_comment", body)
	cases := []struct {
		description string
		claimTTL    time.Duration
		// handled: the first copy was handled and confirmed; otherwise it
		// was only claimed, as by a replica that then crashed.
		handled     bool
		waitLapse   bool
		expCode     int
		expReceived int
	}{
		{"a claim holds a copy off while it stands", time.Hour, false, false, http.StatusOK, 0},
		{"a crashed replica's claim lets the redelivery through once it lapsed", 100 * time.Millisecond, false, true, http.StatusAccepted, 1},
		{"a handled delivery still ignores its redelivery after the claim would have lapsed", 100 * time.Millisecond, true, true, http.StatusOK, 1},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			Ok(t, client.FlushAll(ctx).Err())
			f := newDedupeFixture(t, client, testSecret)
			f.d.claimTTL = c.claimTTL
			start := redisNowMs(t, client)
			if c.handled {
				code, _ := f.send(webhook{id: guid1, body: body})
				Equals(t, http.StatusAccepted, code)
			} else {
				expiry, err := f.d.claim(ctx, record)
				Ok(t, err)
				Assert(t, expiry > 0, "first claim refused")
			}
			if c.waitLapse {
				waitRedisPast(t, client, start+c.claimTTL.Milliseconds())
			}
			code, _ := f.send(webhook{id: guid1, body: body})
			Equals(t, c.expCode, code)
			Equals(t, c.expReceived, len(f.received))

			// Whoever handled the event confirmed it for 72 hours.
			if c.expReceived > 0 {
				expiry, err := client.ZScore(ctx, f.d.recordsKey(), record).Result()
				Ok(t, err)
				left := time.Duration(int64(expiry)-redisNowMs(t, client)) * time.Millisecond
				Assert(t, left > deliveryTTL-time.Minute && left <= deliveryTTL, "record expires in %s, want %s", left, deliveryTTL)
				ttl, err := client.PTTL(ctx, f.d.recordsKey()).Result()
				Ok(t, err)
				Assert(t, ttl > deliveryTTL-time.Minute && ttl <= deliveryTTL, "set expires in %s, want %s", ttl, deliveryTTL)
			}
		})
	}
}

// TestDeliveryForgetOnlyItsOwnClaim: forget is compare-and-delete on the
// claim's expiry, so a replica whose claim lapsed cannot drop the claim
// another replica made since; one whose claim's reply was lost drops only an
// unconfirmed claim.
func TestDeliveryForgetOnlyItsOwnClaim(t *testing.T) {
	client := redistest.Start(t).Client(t)
	ctx := context.Background()
	d := &deliveryDeduper{client: client, claimTTL: 50 * time.Millisecond, logger: logging.NewNoopLogger(t)}
	first, err := d.claim(ctx, "r")
	Ok(t, err)
	waitRedisPast(t, client, first)
	second, err := d.claim(ctx, "r")
	Ok(t, err)
	Assert(t, second > first, "lapsed claim not taken again: %d then %d", first, second)

	d.forget("GitHub", guid1, "r", first)
	score, err := client.ZScore(ctx, d.recordsKey(), "r").Result()
	Ok(t, err)
	Equals(t, float64(second), score)

	d.forget("GitHub", guid1, "r", second)
	Equals(t, int64(0), client.Exists(ctx, d.recordsKey()).Val())

	// Without the claim's token, an unconfirmed claim goes and a confirmed
	// record stays.
	_, err = d.claim(ctx, "r")
	Ok(t, err)
	d.forget("GitHub", guid1, "r", unknownClaim)
	Equals(t, int64(0), client.Exists(ctx, d.recordsKey()).Val())
	d.confirm("GitHub", guid1, "r")
	d.forget("GitHub", guid1, "r", unknownClaim)
	Ok(t, client.ZScore(ctx, d.recordsKey(), "r").Err())
}

// TestDeliveryClaimWithLostReply: a claim that ran in Redis but whose reply
// was lost (or that a replica did not acknowledge) is settled like any
// claim: forgotten when upstream did not take the event, so that its
// redelivery is handled rather than ignored for the claim's lifetime, and
// confirmed when it did, so that its redelivery is ignored.
func TestDeliveryClaimWithLostReply(t *testing.T) {
	srv := redistest.Start(t)
	proxy := redistest.StartProxy(t, srv.Addr)
	opts := srv.Options()
	opts.Addr, opts.MaxRetries, opts.ReadTimeout = proxy.Addr, -1, 300*time.Millisecond
	client := redis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	direct := srv.Client(t)
	ctx := context.Background()
	cases := []struct {
		description string
		body        string
		// expReceived is how many of the two copies reached upstream.
		expReceived int
	}{
		{"upstream failed: the redelivery is handled", failBody, 2},
		{"upstream took it: the redelivery is ignored", `{"action":"created"}`, 1},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			Ok(t, direct.FlushAll(ctx).Err())
			// Loaded, a script runs on its first call: the reply lost is
			// that of a claim that ran, not of a NOSCRIPT refusal.
			for _, script := range []*redis.Script{deliveryClaimScript, deliveryForgetScript, deliveryConfirmScript} {
				Ok(t, script.Load(ctx, direct).Err())
			}
			f := newDedupeFixture(t, client, testSecret)
			// A pooled connection, so the reply lost is the claim's and not
			// the connection handshake's.
			Ok(t, client.Ping(ctx).Err())
			proxy.DropNextReply()
			f.send(webhook{id: guid1, body: c.body})
			Assert(t, strings.Contains(f.logger.GetHistory(), "could not record GitHub delivery"), "the claim's reply was not lost:\n%s", f.logger.GetHistory())
			f.send(webhook{id: guid1, body: c.body})
			Equals(t, c.expReceived, f.receivedCount())
		})
	}
}

// TestDeliveryDeduperWithoutRedis: an unreachable Redis never loses an event.
func TestDeliveryDeduperWithoutRedis(t *testing.T) {
	srv := redistest.Start(t)
	opts := srv.Options()
	opts.MaxRetries, opts.DialerRetries = -1, 1
	client := redis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	srv.Stop()
	const body = `{"action":"created"}`
	cases := []struct {
		description string
		id          string
		expLog      string
	}{
		{"a GUID delivery", guid1, "could not record GitHub delivery " + guid1 + " in Redis, handling it anyway"},
		{"a malformed ID", "d-1", `could not look up GitHub delivery "d-1" in Redis, handling it anyway`},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			f := newDedupeFixture(t, client, testSecret)
			for i := 0; i < 2; i++ {
				code, _ := f.send(webhook{id: c.id, body: body})
				Equals(t, http.StatusAccepted, code)
			}
			Equals(t, []string{body, body}, f.received)
			Assert(t, strings.Contains(f.logger.GetHistory(), c.expLog), "log lacks %q:\n%s", c.expLog, f.logger.GetHistory())
		})
	}
}

// TestDeliveryDeduperCluster: the records are one key, so the scripts run
// in Redis Cluster as they do on one server.
func TestDeliveryDeduperCluster(t *testing.T) {
	client := redistest.StartCluster(t).Client(t)
	const body = `{"action":"created"}`
	f := newDedupeFixture(t, client, testSecret)
	var codes []int
	for _, id := range []string{guid1, guid1, guid2} {
		code, _ := f.send(webhook{id: id, body: body})
		codes = append(codes, code)
	}
	Equals(t, []int{http.StatusAccepted, http.StatusOK, http.StatusOK}, codes)
	Equals(t, int64(1), client.ZCard(context.Background(), f.d.recordsKey()).Val())
}

// TestDeliveryRecordsMemoryAtCap fills the set to the default cap and checks
// the figure the docs give (runatlantis.io/docs/enhanced-locking.md,
// "Webhook de-duplication"). Raising the cap needs a new figure there.
func TestDeliveryRecordsMemoryAtCap(t *testing.T) {
	if testing.Short() {
		t.Skip("fills Redis with 200 000 records")
	}
	// Measured on Redis 7.0: MEMORY USAGE 25.9 MiB, used_memory +27.7 MiB.
	const documentedBytes = 32 << 20
	client := redistest.Start(t).Client(t)
	ctx := context.Background()
	d := &deliveryDeduper{client: client}
	before, err := usedMemory(ctx, client)
	Ok(t, err)
	// Records as the scripts write them: 32 hex characters, a 72 hour expiry.
	expiry := float64(redisNowMs(t, client) + deliveryTTL.Milliseconds())
	for i := 0; i < defaultDeliveryRecords; i += 1000 {
		members := make([]redis.Z, 0, 1000)
		for j := i; j < i+1000; j++ {
			members = append(members, redis.Z{Score: expiry + float64(j), Member: githubRecord("issue_comment", fmt.Sprint(j))})
		}
		Ok(t, client.ZAdd(ctx, d.recordsKey(), members...).Err())
	}
	// One more through the claim script, which keeps the cap.
	expiry2, err := d.claim(ctx, githubRecord("pull_request", "one more"))
	Ok(t, err)
	Assert(t, expiry2 > 0, "claim at the cap refused")
	Equals(t, int64(defaultDeliveryRecords), client.ZCard(ctx, d.recordsKey()).Val())

	usage, err := client.MemoryUsage(ctx, d.recordsKey(), 0).Result()
	Ok(t, err)
	after, err := usedMemory(ctx, client)
	Ok(t, err)
	t.Logf("%d records: MEMORY USAGE %d bytes (%.1f MiB), used_memory grew by %d bytes (%.1f MiB)",
		defaultDeliveryRecords, usage, float64(usage)/(1<<20), after-before, float64(after-before)/(1<<20))
	Assert(t, usage <= documentedBytes, "MEMORY USAGE %d bytes, above the documented %d", usage, documentedBytes)
	Assert(t, after-before <= documentedBytes, "used_memory grew by %d bytes, above the documented %d", after-before, documentedBytes)
}

func usedMemory(ctx context.Context, client redis.UniversalClient) (int64, error) {
	info, err := client.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			var n int64
			_, err := fmt.Sscan(v, &n)
			return n, err
		}
	}
	return 0, fmt.Errorf("no used_memory in INFO memory")
}

// TestDeliveryDeduperOversizeBody: a body larger than any host sends is
// handed to upstream whole, to judge as it would without the deduper, and
// is not recorded.
func TestDeliveryDeduperOversizeBody(t *testing.T) {
	client := redistest.Start(t).Client(t)
	f := newDedupeFixture(t, client, testSecret)
	body := `{"action":"created"}` + strings.Repeat(" ", maxWebhookBody)
	for i := 0; i < 2; i++ {
		code, _ := f.send(webhook{id: guid1, body: body})
		Equals(t, http.StatusAccepted, code)
	}
	Equals(t, 2, f.receivedCount())
	Equals(t, len(body), len(f.received[1]))
	Equals(t, int64(0), client.Exists(context.Background(), f.d.recordsKey()).Val())
}

// TestDeliveryRacingReplicas: copies of one delivery reach two replicas at
// once, for each host; exactly one copy is handled. The copy being handled
// is held inside upstream until every other copy was answered, so they are
// all refused by its claim, not by a confirmed record.
func TestDeliveryRacingReplicas(t *testing.T) {
	client := redistest.Start(t).Client(t)
	const replicas, copiesEach = 2, 4
	cases := []struct {
		description string
		delivery    webhook
	}{
		{"GitHub", webhook{id: guid1, body: `{"action":"created"}`}},
		{"GitLab", webhook{host: hostGitLab, event: "Note Hook", id: guid1, body: gitlabNote}},
		{"GitLab without Idempotency-Key", webhook{host: hostGitLab, eventUUID: guid1, body: gitlabMR}},
		{"Gitea", webhook{host: hostGitea, id: guid1, body: `{"action":"created"}`}},
	}
	for _, c := range cases {
		t.Run(c.description, func(t *testing.T) {
			Ok(t, client.FlushAll(context.Background()).Err())
			var (
				mu         sync.Mutex
				settled    = sync.NewCond(&mu)
				inUpstream int // copies upstream is handling
				answered   int // copies answered without upstream
			)
			upstream := func(w http.ResponseWriter, _ *http.Request) {
				mu.Lock()
				inUpstream++
				settled.Broadcast()
				// Every copy is either here or answered: none is still on
				// its way to a claim. A second copy let through would be
				// here too, so this never waits for good.
				for inUpstream+answered < replicas*copiesEach {
					settled.Wait()
				}
				mu.Unlock()
				w.WriteHeader(http.StatusAccepted)
			}
			var ds []*deliveryDeduper
			for i := 0; i < replicas; i++ {
				f := newDedupeFixture(t, client, testSecret)
				f.d.next = upstream
				// The fixture's log history is not safe for concurrent use.
				f.d.logger = logging.NewNoopLogger(t)
				ds = append(ds, f.d)
			}
			start := make(chan struct{})
			codes := make(chan int, replicas*copiesEach)
			var wg sync.WaitGroup
			for i := 0; i < replicas*copiesEach; i++ {
				req := c.delivery.request()
				d := ds[i%replicas]
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					rec := httptest.NewRecorder()
					d.ServeHTTP(rec, req)
					// Upstream answers 202: any other answer came without it.
					if rec.Code != http.StatusAccepted {
						mu.Lock()
						answered++
						settled.Broadcast()
						mu.Unlock()
					}
					codes <- rec.Code
				}()
			}
			close(start)
			wg.Wait()
			close(codes)
			count := map[int]int{}
			for code := range codes {
				count[code]++
			}
			Equals(t, map[int]int{http.StatusAccepted: 1, http.StatusOK: replicas*copiesEach - 1}, count)
			Equals(t, int64(1), client.ZCard(context.Background(), ds[0].recordsKey()).Val())
		})
	}
}
