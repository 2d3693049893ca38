package testdrive

import (
	"regexp"
	"strings"

	"github.com/atlantis-enhanced/atlantis/e2e/vcssim"
)

// What the story recognises in Atlantis's comments. Upstream's start with
// "Ran <Command> for"; the queue's with a bold title of their own.

// isPlanResult is upstream's answer to a plan, whatever came of it.
func isPlanResult(body string) bool { return strings.Contains(body, "Ran Plan for") }

// isPlan is a plan that ran: the lock was granted and Terraform planned.
func isPlan(body string) bool {
	return isPlanResult(body) && strings.Contains(body, "terraform_data.") && !isLocked(body) &&
		!strings.Contains(body, "Plan Error") && !strings.Contains(body, "Plan Failed")
}

func isApply(body string) bool { return strings.Contains(body, "Ran Apply for") }

func isLocked(body string) bool { return strings.Contains(body, "currently locked") }

func isPosition(body string) bool { return strings.HasPrefix(body, "**Lock queue position**") }

func isHandOver(body string) bool { return strings.HasPrefix(body, "**Lock handed over**") }

func isUnlocked(body string) bool { return strings.Contains(body, "have been unlocked") }

// isPlanStatus is a project's plan status, the one upstream links to the
// job page of the replica running the plan.
func isPlanStatus(st vcssim.Status) bool { return strings.HasPrefix(st.Context, "atlantis/plan: ") }

func hasURLPrefix(url, base string) bool {
	return url == base || strings.HasPrefix(url, base+"/")
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	for _, line := range strings.Split(s, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "Ran ") && !strings.HasPrefix(l, "#") {
			return l
		}
	}
	return s
}

// queuePlace is one row of a position comment's table.
type queuePlace struct {
	project, position, holder, priority string
}

var markdownLink = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)

// parsePositions reads the table of a "Lock queue position" comment:
// | Project | Position | Locked by | Priority | Expires |.
func parsePositions(body string) []queuePlace {
	var places []queuePlace
	for _, line := range strings.Split(body, "\n") {
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) != 5 {
			continue
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(markdownLink.ReplaceAllString(cells[i], "$1"))
		}
		if cells[0] == "Project" || strings.HasPrefix(cells[0], "---") {
			continue
		}
		places = append(places, queuePlace{project: cells[0], position: cells[1], holder: cells[2], priority: cells[3]})
	}
	return places
}
