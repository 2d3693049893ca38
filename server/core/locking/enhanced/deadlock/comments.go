package deadlock

import (
	"fmt"
	"strings"

	"github.com/runatlantis/atlantis/server/events/models"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced"
)

// The first words of the comments, which tests and users look for.
const (
	DetectedHeading = "**Lock queue deadlock**"
	ResolvedHeading = "**Lock queue deadlock resolved**"
)

// notifyComment tells self, one of the deadlock's pulls, who waits for whom
// and what each can do.
func notifyComment(d Deadlock, self enhanced.PullRef) string {
	refs := pullRequests(d)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s wait in lock queues for each other's locks, "+
		"so none of them can ever be handed what it waits for.\n\n", DetectedHeading, members(d, self, refs))
	waitsTable(&b, d, self, refs)
	b.WriteString("\nTo break it, one of these pull requests comments `atlantis unlock`: it leaves every lock queue and frees its locks " +
		"(its plans are discarded), and each lock passes to the next pull request in its queue. " +
		"It can plan again afterwards, and then waits behind the others. " +
		"Otherwise they wait until their queue entries expire.\n")
	return b.String()
}

// resolvedComment tells self that the victim was freed, and why: left of
// its queue entries left their queues, and its locks freed were freed.
func resolvedComment(d Deadlock, self enhanced.PullRef, victim *standing, freed []models.ProjectLock, left int) string {
	refs := pullRequests(d)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s waited in lock queues for each other's locks, "+
		"so none of them could ever be handed what it waited for.\n\n", ResolvedHeading, members(d, self, refs))
	waitsTable(&b, d, self, refs)
	who := "this pull request"
	if self != victim.pull {
		who = ref(victim.pull, refs)
	}
	fmt.Fprintf(&b, "\nAtlantis chose %s to give way: of the pull requests with the lowest priority (`%s`), it queued last. "+
		"It took it out of %s", who, victim.priority, count(left, "lock queue"))
	if len(freed) > 0 {
		names := make([]string, len(freed))
		for i, l := range freed {
			names[i] = lockName(l)
		}
		fmt.Fprintf(&b, " and freed its %s, %s, as `atlantis unlock` does, discarding the plans there",
			count(len(freed), "lock"), strings.Join(names, ", "))
	}
	b.WriteString(". Each freed lock passes to the next pull request in its queue, which is told so.\n")
	if self == victim.pull {
		b.WriteString("\nComment `atlantis plan` to plan again: this pull request then queues behind the pull requests holding those locks now.\n")
	}
	return b.String()
}

// waitsTable lists every wait of the deadlock.
func waitsTable(b *strings.Builder, d Deadlock, self enhanced.PullRef, refs map[enhanced.PullRef]models.PullRequest) {
	b.WriteString("| Pull request | Waits for the lock of | Held by |\n|---|---|---|\n")
	for _, w := range d.Waits {
		waiter, holder := ref(w.Waiter, refs), ref(w.Holder, refs)
		if w.Waiter == self {
			waiter += " (this one)"
		}
		if w.Holder == self {
			holder += " (this one)"
		}
		fmt.Fprintf(b, "| %s | %s | %s |\n", waiter, lockName(w.Lock), holder)
	}
}

// pullRequests are the deadlock's pulls as their locks and entries record
// them, for their links.
func pullRequests(d Deadlock) map[enhanced.PullRef]models.PullRequest {
	refs := map[enhanced.PullRef]models.PullRequest{}
	for _, w := range d.Waits {
		refs[w.Holder] = w.Lock.Pull
		refs[w.Waiter] = w.Entry.Lock.Pull
	}
	return refs
}

// members names the deadlock's pulls, self first as "this pull request".
func members(d Deadlock, self enhanced.PullRef, refs map[enhanced.PullRef]models.PullRequest) string {
	names := []string{"this pull request"}
	for _, p := range d.Pulls {
		if p != self {
			names = append(names, ref(p, refs))
		}
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// ref is a pull as the VCS links it. The pulls of a deadlock are of one
// repo: a repo's locks are only ever asked for by its own pulls.
func ref(p enhanced.PullRef, refs map[enhanced.PullRef]models.PullRequest) string {
	text := fmt.Sprintf("#%d", p.Num)
	if url := refs[p].URL; url != "" {
		return fmt.Sprintf("[%s](%s)", text, url)
	}
	return text
}

// lockName is a project lock as the queue's comments name it.
func lockName(lock models.ProjectLock) string {
	name := fmt.Sprintf("`%s` (workspace `%s`)", lock.Project.Path, lock.Workspace)
	if lock.Project.ProjectName == "" {
		return name
	}
	return fmt.Sprintf("project `%s`, %s", lock.Project.ProjectName, name)
}

func count(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
