package vcssim_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-github/v88/github"
	"github.com/runatlantis/atlantis/server/events/models"
	atlgithub "github.com/runatlantis/atlantis/server/events/vcs/github"
	"github.com/runatlantis/atlantis/server/logging"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

func TestGoGitHubCommentIsRecorded(t *testing.T) {
	sim := newSim(t)
	_, pr := newRepoAndPull(t, sim)

	client, err := github.NewClient(
		github.WithHTTPClient(sim.HTTPClient()),
		github.WithEnterpriseURLs(sim.URL(), sim.URL()),
	)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	created, resp, err := client.Issues.CreateComment(ctx, "acme", "infra", 1, &github.IssueComment{Body: github.Ptr("Ran Plan for dir: `.`")})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusCreated || created.GetUser().GetLogin() != sim.User() {
		t.Fatalf("status %d, author %q", resp.StatusCode, created.GetUser().GetLogin())
	}

	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	got, err := sim.WaitForComment(waitCtx, "acme/infra", pr.Number, func(c vcssim.Comment) bool {
		return strings.HasPrefix(c.Body, "Ran Plan")
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != created.GetID() || got.Author != sim.User() || got.PR != 1 || got.CreatedAt.IsZero() {
		t.Fatalf("recorded %+v", got)
	}

	// Wrong token: rejected like GitHub, and not recorded.
	bad, err := github.NewClient(
		github.WithHTTPClient(&http.Client{Transport: &github.BasicAuthTransport{Username: sim.User(), Password: "nope", Transport: sim.Transport()}}),
		github.WithEnterpriseURLs(sim.URL(), sim.URL()),
	)
	if err != nil {
		t.Fatal(err)
	}
	if _, resp, err := bad.Issues.CreateComment(ctx, "acme", "infra", 1, &github.IssueComment{Body: github.Ptr("x")}); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: %v", err)
	}
	if n := len(sim.Comments("acme/infra", 1)); n != 1 {
		t.Fatalf("%d comments recorded, want 1", n)
	}

	// Timeouts explain themselves.
	short, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if _, err := sim.WaitForComment(short, "acme/infra", 1, func(c vcssim.Comment) bool { return false }); err == nil ||
		!strings.Contains(err.Error(), "Ran Plan") {
		t.Fatalf("timeout error %v does not list seen comments", err)
	}
}

// TestUpstreamClientAgainstSim drives upstream Atlantis's own GitHub client
// (the code the atlantis binary runs) through every call it makes in the
// PR flows, so the Sim's answers are checked by the real decoder.
func TestUpstreamClientAgainstSim(t *testing.T) {
	sim := newSim(t)
	repo, pr := newRepoAndPull(t, sim)

	// Upstream's basic-auth transport falls back to http.DefaultTransport,
	// which does not trust the Sim's CA; swap it for the test.
	orig := http.DefaultTransport
	http.DefaultTransport = sim.Transport()
	t.Cleanup(func() { http.DefaultTransport = orig })

	logger := logging.NewNoopLogger(t)
	client, err := atlgithub.New(sim.Host(), &atlgithub.UserCredentials{User: sim.User(), Token: sim.Token()},
		atlgithub.Config{AllowMergeableBypassApply: true}, 100, logger)
	if err != nil {
		t.Fatal(err)
	}
	atlRepo, err := models.NewRepo(models.Github, repo.FullName, repo.CloneURL, sim.User(), sim.Token(), "")
	if err != nil {
		t.Fatal(err)
	}
	pull := models.PullRequest{Num: pr.Number, HeadCommit: pr.HeadSHA, HeadBranch: pr.HeadRef, BaseBranch: "main", BaseRepo: atlRepo, Author: pr.Author}

	t.Run("GetPullRequest", func(t *testing.T) {
		ghPull, err := client.GetPullRequest(logger, atlRepo, 1)
		if err != nil {
			t.Fatal(err)
		}
		if ghPull.GetHead().GetSHA() != pr.HeadSHA || ghPull.GetMergeableState() != "clean" {
			t.Fatalf("pull %+v", ghPull)
		}
	})

	t.Run("GetModifiedFiles", func(t *testing.T) {
		files, err := client.GetModifiedFiles(logger, atlRepo, pull)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(files)
		want := []string{"docs/notes/README.txt", "main.tf", "staging/main.tf"}
		if !slices.Equal(files, want) {
			t.Fatalf("files %v, want %v", files, want)
		}
	})

	t.Run("GetModifiedFilesPaginates", func(t *testing.T) {
		many := map[string]string{}
		for i := range 250 {
			many[fmt.Sprintf("mod/f%03d.tf", i)] = "# x\n"
		}
		big, err := sim.OpenPullRequest(repo, 2, "many-files", many, "alice")
		if err != nil {
			t.Fatal(err)
		}
		files, err := client.GetModifiedFiles(logger, atlRepo, models.PullRequest{Num: big.Number, BaseRepo: atlRepo})
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != len(many) {
			t.Fatalf("%d files, want %d", len(files), len(many))
		}
	})

	t.Run("StatusesAndMergeability", func(t *testing.T) {
		if err := client.UpdateStatus(logger, atlRepo, pull, models.PendingCommitStatus, "atlantis/plan", "Plan in progress...", "https://atlantis.example/jobs/1"); err != nil {
			t.Fatal(err)
		}
		if err := client.UpdateStatus(logger, atlRepo, pull, models.SuccessCommitStatus, "atlantis/plan", "Plan succeeded.", ""); err != nil {
			t.Fatal(err)
		}
		statuses := sim.Statuses("acme/infra", pr.HeadSHA)
		if len(statuses) != 2 || statuses[1].State != "success" || statuses[1].Context != "atlantis/plan" || statuses[1].Creator != sim.User() {
			t.Fatalf("statuses %+v", statuses)
		}
		bogus := pull
		bogus.HeadCommit = strings.Repeat("a", 40)
		if err := client.UpdateStatus(logger, atlRepo, bogus, models.SuccessCommitStatus, "atlantis/plan", "x", ""); err == nil {
			t.Fatal("status on unknown commit accepted")
		}

		ms, err := client.PullIsMergeable(logger, atlRepo, pull, "atlantis", nil)
		if err != nil || !ms.IsMergeable {
			t.Fatalf("mergeable %+v, %v", ms, err)
		}
		if err := sim.SetMergeableState(pr, "blocked"); err != nil {
			t.Fatal(err)
		}
		// Blocked plus bypass-apply goes through the GraphQL rollup.
		ms, err = client.PullIsMergeable(logger, atlRepo, pull, "atlantis", nil)
		if err != nil || !ms.IsMergeable {
			t.Fatalf("blocked with bypass: %+v, %v", ms, err)
		}
		ghPull, err := client.GetPullRequest(logger, atlRepo, 1)
		if err != nil {
			t.Fatal(err)
		}
		ok, err := client.IsMergeableMinusApply(logger, atlRepo, ghPull, "atlantis", nil)
		if err != nil || !ok {
			t.Fatalf("IsMergeableMinusApply %v, %v", ok, err)
		}
		if err := sim.SetMergeableState(pr, "clean"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("Approval", func(t *testing.T) {
		st, err := client.PullIsApproved(logger, atlRepo, pull)
		if err != nil || st.IsApproved {
			t.Fatalf("approved before review: %+v, %v", st, err)
		}
		if err := sim.ApprovePullRequest(pr, "carol"); err != nil {
			t.Fatal(err)
		}
		st, err = client.PullIsApproved(logger, atlRepo, pull)
		if err != nil || !st.IsApproved || st.ApprovedBy != "carol" {
			t.Fatalf("approval %+v, %v", st, err)
		}
		if err := client.DiscardReviews(logger, atlRepo, pull); err != nil {
			t.Fatal(err)
		}
		st, err = client.PullIsApproved(logger, atlRepo, pull)
		if err != nil || st.IsApproved {
			t.Fatalf("approved after discard: %+v, %v", st, err)
		}
	})

	t.Run("CommentsHideAndReact", func(t *testing.T) {
		if err := client.CreateComment(logger, atlRepo, 1, "Ran Plan for dir: `staging` workspace: `default`\n\nplan output", "plan"); err != nil {
			t.Fatal(err)
		}
		if err := client.CreateComment(logger, atlRepo, 1, "Ran Apply for dir: `staging`", "apply"); err != nil {
			t.Fatal(err)
		}
		if err := client.HidePrevCommandComments(logger, atlRepo, 1, "Plan", ""); err != nil {
			t.Fatal(err)
		}
		var plan, apply vcssim.Comment
		for _, c := range sim.Comments("acme/infra", 1) {
			switch {
			case strings.HasPrefix(c.Body, "Ran Plan"):
				plan = c
			case strings.HasPrefix(c.Body, "Ran Apply"):
				apply = c
			}
		}
		if !plan.Minimized || plan.MinimizedReason != "OUTDATED" || apply.Minimized {
			t.Fatalf("plan %+v apply %+v", plan, apply)
		}
		if err := client.ReactToComment(logger, atlRepo, 1, plan.ID, "eyes"); err != nil {
			t.Fatal(err)
		}
		if got := sim.Comments("acme/infra", 1); !slices.ContainsFunc(got, func(c vcssim.Comment) bool {
			return c.ID == plan.ID && slices.Equal(c.Reactions, []string{"eyes"})
		}) {
			t.Fatalf("reaction not recorded: %+v", got)
		}
	})

	t.Run("CommentListPaginates", func(t *testing.T) {
		for range 35 {
			if err := client.CreateComment(logger, atlRepo, 1, "Ran Policy Check for dir: `x`", "policy_check"); err != nil {
				t.Fatal(err)
			}
		}
		// More than one page of 30; all of them must be seen to be hidden.
		if err := client.HidePrevCommandComments(logger, atlRepo, 1, "Policy Check", ""); err != nil {
			t.Fatal(err)
		}
		for _, c := range sim.Comments("acme/infra", 1) {
			if strings.HasPrefix(c.Body, "Ran Policy Check") && !c.Minimized {
				t.Fatalf("comment %d not hidden", c.ID)
			}
		}
	})

	t.Run("RepoLabelsContentsTeams", func(t *testing.T) {
		cloneURL, err := client.GetCloneURL(logger, models.Github, "acme/infra")
		if err != nil || cloneURL != repo.CloneURL {
			t.Fatalf("clone URL %q, %v", cloneURL, err)
		}
		if err := sim.SetLabels(pr, "no-autoplan"); err != nil {
			t.Fatal(err)
		}
		labels, err := client.GetPullLabels(logger, atlRepo, pull)
		if err != nil || !slices.Equal(labels, []string{"no-autoplan"}) {
			t.Fatalf("labels %v, %v", labels, err)
		}
		found, data, err := client.GetFileContent(logger, atlRepo, pr.HeadRef, "staging/main.tf")
		if err != nil || !found || !strings.Contains(string(data), `"staging"`) {
			t.Fatalf("content %q found=%v err=%v", data, found, err)
		}
		found, _, err = client.GetFileContent(logger, atlRepo, pr.HeadRef, "atlantis.yaml")
		if err != nil || found {
			t.Fatalf("missing atlantis.yaml: found=%v err=%v", found, err)
		}
		teams, err := client.GetTeamNamesForUser(logger, atlRepo, models.User{Username: "bob"})
		if err != nil || len(teams) != 0 {
			t.Fatalf("teams %v, %v", teams, err)
		}
		children, err := client.GetChildTeams(logger, atlRepo, "platform")
		if err != nil || len(children) != 0 {
			t.Fatalf("child teams %v, %v", children, err)
		}
	})

	t.Run("MergePull", func(t *testing.T) {
		if err := client.MergePull(logger, pull, models.PullRequestOptions{MergeMethod: "squash"}); err != nil {
			t.Fatal(err)
		}
		merged, err := sim.PullRequest("acme/infra", 1)
		if err != nil || !merged.Merged || merged.MergeCommitSHA == "" {
			t.Fatalf("after merge %+v, %v", merged, err)
		}
		if err := client.MergePull(logger, pull, models.PullRequestOptions{}); err == nil {
			t.Fatal("merging a merged pull request succeeded")
		}
	})

	for _, r := range sim.Requests() {
		t.Log(r)
	}
}
