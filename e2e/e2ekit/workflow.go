package e2ekit

import (
	"encoding/json"
	"strings"
)

// Workflow says what the workflow's steps do besides Terraform's own.
type Workflow struct {
	// Spans is a file each plan and apply appends its first and last step
	// to (see ReadSpans); empty records nothing.
	Spans string
	// Stall is a file the plan's first step waits on while it exists, for
	// 30 s at most, ending at once when the replica running it dies. It may
	// name $PULL_NUM, to stall one pull's plans only. Empty never stalls.
	Stall string
}

// RepoConfig is a server-side repo config (--repo-config-json) that runs w
// for every repo.
func (w Workflow) RepoConfig() (string, error) {
	plan := []any{}
	apply := []any{}
	if w.Spans != "" {
		plan = append(plan, w.mark("plan-start"))
		apply = append(apply, w.mark("apply-start"))
	}
	if w.Stall != "" {
		// $PPID is the atlantis process running the step.
		plan = append(plan, map[string]any{"run": `i=0; while [ $i -lt 300 ] && [ -e "` + w.Stall +
			`" ] && kill -0 $PPID 2>/dev/null; do sleep 0.1; i=$((i+1)); done`})
	}
	plan = append(plan, "init", "plan")
	apply = append(apply, "apply")
	if w.Spans != "" {
		plan = append(plan, w.mark("plan-end"))
		apply = append(apply, w.mark("apply-end"))
	}
	cfg := map[string]any{
		"repos": []any{map[string]any{"id": "/.*/", "workflow": "e2e"}},
		"workflows": map[string]any{
			"e2e": map[string]any{
				"plan":  map[string]any{"steps": plan},
				"apply": map[string]any{"steps": apply},
			},
		},
	}
	b, err := json.Marshal(cfg)
	return string(b), err
}

// mark is a step appending "<pull> <dir> <edge> <unix ns> <atlantis pid>" to
// the spans file: a witness of when a command ran that does not rely on
// Atlantis's own logs.
func (w Workflow) mark(edge string) map[string]any {
	quoted := "'" + strings.ReplaceAll(w.Spans, "'", `'\''`) + "'"
	return map[string]any{"run": `echo "$PULL_NUM ${REPO_REL_DIR:-.} ` + edge + ` $(date +%s%N) $PPID" >> ` + quoted}
}
