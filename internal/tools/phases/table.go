// Package phases reads the phase plan, CONTRIBUTING.md's "The six phases"
// tables, and says which phase each file of the module belongs to. The
// layering test and `make pr-series` both read the plan through it, so the
// document is the only copy of the plan.
package phases

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Section is the heading whose tables hold the plan.
const Section = "## The six phases"

// Plan is the phase plan as CONTRIBUTING.md writes it.
type Plan struct {
	// Phases in series order: 1, 2, 3, 4, 4b, 5, 6.
	Phases []string
	claims []claim
}

// claim is one path in backticks in a row's last cell. Scopes are the folders
// whose parentheses enclose it, outermost first, each written relative to the
// one before, as the path itself is.
type claim struct {
	phase  string
	token  string
	scopes []string
	// listOnly is set on a folder whose parentheses open with a path: it names
	// only the paths listed there, not itself.
	listOnly bool
}

var (
	phaseID   = regexp.MustCompile(`^[0-9]+[a-z]?$`)
	extension = regexp.MustCompile(`\.[A-Za-z0-9]+$`)
)

// Parse reads the tables of the section Section of a CONTRIBUTING.md: every
// table whose first header cell is "Phase", one phase per row, its paths in
// backticks in the row's last cell.
func Parse(doc []byte) (*Plan, error) {
	p := &Plan{}
	in, header, line := false, false, 0
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(text, "## ") {
			in = text == Section
			continue
		}
		if !in {
			continue
		}
		if !strings.HasPrefix(text, "|") {
			header = false
			continue
		}
		cells := splitRow(text)
		switch {
		case !header && cells[0] == "Phase":
			header = true
		case !header || strings.Trim(cells[0], "-: ") == "":
			// A table of something else, or the header's underline.
		case !phaseID.MatchString(cells[0]):
			return nil, fmt.Errorf("CONTRIBUTING.md line %d: phase %q is not a phase number such as 4 or 4b: fix the first cell of the row", line, cells[0])
		default:
			claims, err := parseCell(cells[0], cells[len(cells)-1])
			if err != nil {
				return nil, fmt.Errorf("CONTRIBUTING.md line %d: %w", line, err)
			}
			p.claims = append(p.claims, claims...)
			if !slices.Contains(p.Phases, cells[0]) {
				p.Phases = append(p.Phases, cells[0])
			}
		}
	}
	if len(p.Phases) == 0 {
		return nil, fmt.Errorf("CONTRIBUTING.md has no phase table under %q: the layering test and make pr-series read the plan from it", Section)
	}
	slices.SortFunc(p.Phases, comparePhases)
	return p, nil
}

// Before reports whether phase a comes before phase b in the series.
func (p *Plan) Before(a, b string) bool { return comparePhases(a, b) < 0 }

// comparePhases orders 4 before 4b before 5.
func comparePhases(a, b string) int {
	na, _ := strconv.Atoi(strings.TrimRight(a, "abcdefghijklmnopqrstuvwxyz"))
	nb, _ := strconv.Atoi(strings.TrimRight(b, "abcdefghijklmnopqrstuvwxyz"))
	if na != nb {
		return na - nb
	}
	return strings.Compare(a, b)
}

func splitRow(row string) []string {
	cells := strings.Split(strings.Trim(row, "|"), "|")
	for i := range cells {
		cells[i] = strings.TrimSpace(cells[i])
	}
	return cells
}

// item is a piece of a cell: a path or word in backticks, a parenthesis, or
// other text.
type item struct {
	kind byte // '`' for code, '(' and ')', 't' for text
	text string
}

func lex(cell string) ([]item, error) {
	var items []item
	for i := 0; i < len(cell); i++ {
		switch c := cell[i]; {
		case c == '`':
			end := strings.IndexByte(cell[i+1:], '`')
			if end < 0 {
				return nil, fmt.Errorf("an unclosed backtick in %q", cell[i:])
			}
			items = append(items, item{'`', cell[i+1 : i+1+end]})
			i += end + 1
		case c == '(' || c == ')':
			items = append(items, item{c, ""})
		case c != ' ':
			items = append(items, item{'t', string(c)})
		}
	}
	return items, nil
}

// isPath tells a path from a word in backticks: a path has no space and has a
// slash or a file extension.
func isPath(code string) bool {
	if code == "" || strings.ContainsAny(code, " \t") {
		return false
	}
	return strings.Contains(code, "/") || extension.MatchString(code)
}

func parseCell(phase, cell string) ([]claim, error) {
	items, err := lex(cell)
	if err != nil {
		return nil, err
	}
	var claims []claim
	// stack holds, per open parenthesis, the folder it scopes or "".
	var stack []string
	scopes := func() []string {
		var s []string
		for _, f := range stack {
			if f != "" {
				s = append(s, f)
			}
		}
		return s
	}
	for i := 0; i < len(items); i++ {
		it := items[i]
		switch {
		case it.kind == '(':
			stack = append(stack, "")
		case it.kind == ')':
			if len(stack) == 0 {
				return nil, fmt.Errorf("phase %s: a ')' without its '('", phase)
			}
			stack = stack[:len(stack)-1]
		case it.kind == '`' && isPath(it.text):
			c := claim{phase: phase, token: it.text, scopes: scopes()}
			if strings.HasSuffix(it.text, "/") && i+1 < len(items) && items[i+1].kind == '(' {
				c.listOnly = i+2 < len(items) && items[i+2].kind == '`' && isPath(items[i+2].text)
				stack = append(stack, it.text)
				i++
			}
			claims = append(claims, c)
		}
	}
	if len(stack) != 0 {
		return nil, fmt.Errorf("phase %s: a '(' without its ')'", phase)
	}
	return claims, nil
}
