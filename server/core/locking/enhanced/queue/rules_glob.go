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

// matchSegments is wildcard matching over segments: "**" is the wildcard and
// every other pattern segment matches exactly one name segment. Names come
// from pulls (a head branch may have hundreds of segments), so it must not
// try every way of splitting the name among the "**"s, which is exponential
// in their number. When a segment fails to match, only the last "**" takes
// one more name segment: any split an earlier "**" could give, the last one
// can give too. So it makes at most len(pattern)*len(name) segment matches.
func matchSegments(pattern, name []string) bool {
	p, n := 0, 0
	// star is the index of the last "**" met, -1 before any; from is the
	// name segment where what follows it is being tried.
	star, from := -1, 0
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == anySegments:
			star, from = p, n
			p++
		case p < len(pattern) && matchSegment(pattern[p], name[n]):
			p, n = p+1, n+1
		case star >= 0:
			from++
			p, n = star+1, from
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == anySegments {
		p++
	}
	return p == len(pattern)
}

// matchSegment matches one segment; the error is nil by the invariant on
// glob.
func matchSegment(pattern, name string) bool {
	ok, _ := path.Match(pattern, name)
	return ok
}
