package vcssim_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-github/v88/github"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// TestHeldCommentsWaitForReleaseOrAreDropped: a matching comment waits for
// the hold; its client giving up leaves no comment, a release lets the next
// one through, and other comments are never held.
func TestHeldCommentsWaitForReleaseOrAreDropped(t *testing.T) {
	sim := newSim(t)
	_, pr := newRepoAndPull(t, sim)
	client, err := github.NewClient(github.WithHTTPClient(sim.HTTPClient()), github.WithEnterpriseURLs(sim.URL(), sim.URL()))
	if err != nil {
		t.Fatal(err)
	}
	post := func(ctx context.Context, body string) error {
		_, _, err := client.Issues.CreateComment(ctx, "acme", "infra", pr.Number, &github.IssueComment{Body: github.Ptr(body)})
		return err
	}
	hold := sim.HoldComments(func(body string) bool { return strings.HasPrefix(body, "held") })

	if err := post(context.Background(), "not held"); err != nil {
		t.Fatal(err)
	}

	// The client gives up while held, as a killed process would.
	gaveUp, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- post(gaveUp, "held, then dropped") }()
	awaitArrival(t, hold)
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a held comment was answered before the hold was released")
	}
	waitFor(t, "the dropped request to be counted", func() bool { return hold.Dropped() == 1 })

	hold.Release()
	again := sim.HoldComments(func(body string) bool { return strings.HasPrefix(body, "held") })
	go func() { done <- post(context.Background(), "held, then released") }()
	awaitArrival(t, again)
	again.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var bodies []string
	for _, c := range sim.Comments("acme/infra", pr.Number) {
		bodies = append(bodies, c.Body)
	}
	if strings.Join(bodies, "|") != "not held|held, then released" {
		t.Fatalf("comments %q, want the unheld one and the released one", bodies)
	}
}

func awaitArrival(t *testing.T, hold *vcssim.CommentHold) {
	t.Helper()
	select {
	case <-hold.Arrived():
	case <-time.After(10 * time.Second):
		t.Fatal("the matching comment was not held")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
