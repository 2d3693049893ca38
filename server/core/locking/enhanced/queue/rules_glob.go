package queue

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// glob is a pattern of a priority rule, matched segment by segment on "/":
//
//   - "*" matches any run of characters within one segment, "?" one
//     character other than "/", and "[abc]", "[a-z]", "[^a]" and "\*" work as
//     in path.Match.
//   - A segment that is exactly "**" matches zero or more whole segments, so
//     "prod/**" matches "prod", "prod/a" and "prod/a/b" (a project in the prod
//     folder is "in prod") but not "production"; "**/network" matches
//     "network" and "a/b/network"; "**" alone matches every name, even "" and
//     ".". Anywhere else "**" is rejected at load rather than read as "*".
//   - The empty pattern matches only the empty name (an unnamed project).
//
// Invariant: every segment other than "**" is a valid path.Match pattern,
// checked by compileGlob, so matching never meets path.ErrBadPattern.
type glob struct {
	segments []string
	// foldCase makes the match case-insensitive: segments are lower-cased at
	// compile time and names at match time.
	foldCase bool
}

const anySegments = "**"

// compileGlob checks pattern and prepares it for matching. Its error is
// meant to follow the rule field and the pattern in a message, and says how
// to write the pattern instead.
func compileGlob(pattern string, foldCase bool) (*glob, error) {
	if foldCase {
		pattern = strings.ToLower(pattern)
	}
	var segments []string
	for _, segment := range strings.Split(pattern, "/") {
		if segment == anySegments {
			// "a/**/**/b" means "a/**/b"; collapsing keeps matching linear
			// in the number of "**" segments.
			if len(segments) > 0 && segments[len(segments)-1] == anySegments {
				continue
			}
			segments = append(segments, segment)
			continue
		}
		if hasUnescapedDoubleStar(segment) {
			return nil, errors.New(`"**" must be a whole path segment, as in "prod/**" or "**/network": use "*" to match within one segment`)
		}
		if _, err := path.Match(segment, ""); err != nil {
			return nil, fmt.Errorf(`malformed pattern near %q: close every "[" with "]", and write a literal "[", "*", "?" or "\" as "\[", "\*", "\?" or "\\"`, segment)
		}
		segments = append(segments, segment)
	}
	return &glob{segments: segments, foldCase: foldCase}, nil
}

// hasUnescapedDoubleStar reports a "**" that path.Match would read as "*",
// skipping escaped characters and character classes, where "*" is literal.
func hasUnescapedDoubleStar(segment string) bool {
	for i := 0; i < len(segment); i++ {
		switch segment[i] {
		case '\\':
			i++
		case '[':
			for i++; i < len(segment) && segment[i] != ']'; i++ {
				if segment[i] == '\\' {
					i++
				}
			}
		case '*':
			if i+1 < len(segment) && segment[i+1] == '*' {
				return true
			}
		}
	}
	return false
}

func (g *glob) match(name string) bool {
	if g.foldCase {
		name = strings.ToLower(name)
	}
	return matchSegments(g.segments, strings.Split(name, "/"))
}

// matchSegments backtracks only at "**" segments; names and patterns have a
// handful of segments, so the search stays small.
func matchSegments(pattern, name []string) bool {
	for len(pattern) > 0 {
		if pattern[0] == anySegments {
			rest := pattern[1:]
			for skip := 0; skip <= len(name); skip++ {
				if matchSegments(rest, name[skip:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		// The error is nil by the invariant on glob.
		if ok, _ := path.Match(pattern[0], name[0]); !ok {
			return false
		}
		pattern, name = pattern[1:], name[1:]
	}
	return len(name) == 0
}
