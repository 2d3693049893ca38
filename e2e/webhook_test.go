package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// TestRedeliveredWebhookHandledOnce: GitHub redelivers a webhook with the
// same X-GitHub-Delivery and body to the other replica; only the first copy
// is acted on, and so is a replay of the signed body under a fresh delivery
// ID. A webhook with a bad signature is rejected and records nothing, so it
// cannot suppress the genuine delivery.
func TestRedeliveredWebhookHandledOnce(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	pr := h.openPR(1)

	// A forged "opened" webhook: upstream answers 400 before anything else,
	// and the dedupe layer must not record it.
	forged, err := h.sim.SendWithBadSignature(events(h.r1), pr)
	Ok(t, err)
	Equals(t, http.StatusBadRequest, forged.Status)
	Assert(t, strings.Contains(forged.ResponseBody, "signature"), "unexpected answer to a forged webhook: %s", forged.ResponseBody)
	Equals(t, int64(0), h.deliveryRecords())
	Equals(t, 0, h.lockHolder())
	Assert(t, !h.exists(pullIndexKey(pr.Number)), "forged webhook touched %s", pullIndexKey(pr.Number))
	Equals(t, 0, len(h.botComments(pr, mark{})))

	// So the genuine delivery with that ID, arriving later on the other
	// replica, is handled: it autoplans and locks.
	m := h.mark(pr)
	status, err := h.sim.Redeliver(events(h.r2), forged)
	Ok(t, err)
	Equals(t, http.StatusOK, status)
	h.assertConfirmed(forged)
	h.waitComment(pr, m, "the autoplan", isPlanned)
	h.waitDone(pr, m, "atlantis/plan")
	Equals(t, 1, h.lockHolder())

	// `atlantis plan` lands on replica 1; GitHub redelivers it right away to
	// replica 2, and to replica 1 itself.
	m, d := h.comment(h.r1, pr, "atlantis plan")
	Assert(t, d.ID != forged.ID, "vcssim reused a delivery ID")
	h.assertConfirmed(d)
	for _, r := range h.fleet.Replicas {
		status, err = h.sim.Redeliver(events(r), d)
		Ok(t, err)
		Equals(t, http.StatusOK, status)
	}
	// The signature covers only the body: a captured copy replayed under a
	// fresh GUID is the same delivery, and adds no record.
	replay := d
	replay.ID = uuid.NewString()
	status, err = h.sim.Redeliver(events(h.r2), replay)
	Ok(t, err)
	Equals(t, http.StatusOK, status)
	Equals(t, int64(2), h.deliveryRecords()) // the autoplan's and the comment's
	h.waitComment(pr, m, "the plan", isPlanned)
	h.waitDone(pr, m, "atlantis/plan")
	Equals(t, 1, h.lockHolder())

	// Both replicas said why they dropped their copy.
	for _, r := range h.fleet.Replicas {
		h.eventually(r.Name()+" to log that it dropped the redelivery", func() (bool, string) {
			return strings.Contains(r.Output(), "GitHub delivery "+d.ID+" was already handled by a replica"), "not logged"
		})
	}
	h.eventually(h.r2.Name()+" to log that it dropped the replay", func() (bool, string) {
		return strings.Contains(h.r2.Output(), "GitHub delivery "+replay.ID+" was already handled by a replica"), "not logged"
	})

	// Exactly one plan ran. The copies were dropped before their webhook
	// was answered, so nothing of theirs can come later; the unlock round
	// trip is one more barrier before counting.
	m2, _ := h.comment(h.r2, pr, "atlantis unlock")
	h.waitComment(pr, m2, "the unlock confirmation", isUnlocked)
	h.waitNoLock()
	plans := 0
	for _, c := range h.botComments(pr, m) {
		if isPlanResult(c.Body) {
			plans++
		}
	}
	Equals(t, 1, plans)
	planStatuses := 0
	for _, st := range h.sim.Statuses(repoFull, pr.HeadSHA) {
		if st.Context == "atlantis/plan" && st.State == "pending" {
			planStatuses++
		}
	}
	Equals(t, 2, planStatuses) // the autoplan's and the comment's
	h.checkRedisConsistent()
}

// assertConfirmed checks that d was handled and its record confirmed: it
// lasts 72 hours, not the two minutes of a bare claim.
func (h *harness) assertConfirmed(d vcssim.Delivery) {
	h.t.Helper()
	left := h.deliveryLeft(d)
	Assert(h.t, left > deliveryTTL-10*time.Minute && left <= deliveryTTL,
		"delivery %s's record expires in %s, want %s", d.ID, left, deliveryTTL)
}
