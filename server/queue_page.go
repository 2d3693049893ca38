package server

import (
	"bytes"
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"time"

	upstream "github.com/runatlantis/atlantis/server"
)

//go:embed templates/queue.html.tmpl
var queuePageSource string

var queuePageTemplate = template.Must(template.New("queue").Parse(queuePageSource))

// queueTimeFormat is how upstream's locks page writes times.
const queueTimeFormat = "2006-01-02 15:04:05"

// queuePage serves GET /queue: the data of /api/locks/queue-status as a
// table in the look of upstream's locks page, whose stylesheets it loads.
// It is registered on upstream's router, so upstream's web basic auth
// covers it as it covers the locks page.
type queuePage struct {
	read func(ctx context.Context, now time.Time) (QueueStatus, error)
	// lockURL is upstream's page for one lock, or "" when there is none.
	lockURL         func(key string) string
	basePath        string
	atlantisVersion string
}

func (s *Server) newQueuePage() *queuePage {
	return &queuePage{
		read:            s.readQueueStatus,
		lockURL:         s.upstreamLockURL,
		basePath:        s.AtlantisURL.Path,
		atlantisVersion: s.AtlantisVersion,
	}
}

// upstreamLockURL links to upstream's page for one lock, the one its index
// links each lock to. The route exists once upstream's routes are set up,
// which happens before the first request.
func (s *Server) upstreamLockURL(key string) string {
	route := s.Router.Get(upstream.LockViewRouteName)
	if route == nil {
		return ""
	}
	u, err := route.URL(upstream.LockViewRouteIDQueryParam, url.QueryEscape(key))
	if err != nil {
		return ""
	}
	return s.AtlantisURL.Path + u.String()
}

// queuePageData is what the template shows: one row per queued pull, and one
// for a lock nobody waits for.
type queuePageData struct {
	BasePath        string
	AtlantisVersion string
	QueueEnabled    bool
	Rows            []queuePageRow
	// Commands are the commands running now, each holding its pull's
	// command lease, on any replica.
	Commands []queuePageCommand
}

type queuePageCommand struct {
	Pull    string
	Command string
	Replica string
	Running string
	Since   string
}

type queuePageRow struct {
	// First is the lock's first row, which carries the lock and holder cells
	// spanning Span rows.
	First   bool
	Span    int
	Lock    string
	LockURL string
	Holder  *queuePagePull
	Entry   *queuePageEntry
}

type queuePagePull struct {
	Number int
	URL    string
	User   string
}

type queuePageEntry struct {
	queuePagePull
	Position    int
	Priority    string
	Synchronous bool
	// Waiting is "unknown", and WaitingSince empty, where the backend
	// records no start.
	Waiting      string
	WaitingSince string
	Expires      string
}

func (p *queuePage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), queueStatusTimeout)
	defer cancel()
	status, err := p.read(ctx, time.Now())
	if err != nil {
		// Upstream's index answers a failed lock read the same way.
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "Could not retrieve the lock queue: %s", err)
		return
	}
	var page bytes.Buffer
	if err := queuePageTemplate.Execute(&page, p.data(status)); err != nil {
		http.Error(w, fmt.Sprintf("rendering the lock queue page: %s", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(page.Bytes()) // nolint: errcheck
}

func (p *queuePage) data(status QueueStatus) queuePageData {
	d := queuePageData{BasePath: p.basePath, AtlantisVersion: p.atlantisVersion, QueueEnabled: status.QueueEnabled}
	for _, c := range status.Commands {
		d.Commands = append(d.Commands, queuePageCommand{
			Pull:    fmt.Sprintf("%s#%d", c.Repo, c.PullNumber),
			Command: c.Command,
			Replica: c.Replica,
			Running: (time.Duration(c.RunningSeconds) * time.Second).String(),
			Since:   c.RunningSince.Format(queueTimeFormat),
		})
	}
	for _, l := range status.Locks {
		first := queuePageRow{First: true, Span: max(len(l.Queue), 1), Lock: lockLabel(l), LockURL: p.lockURL(l.Key)}
		if h := l.Holder; h != nil {
			first.Holder = &queuePagePull{Number: h.PullNumber, URL: h.PullURL, User: h.User}
		}
		if len(l.Queue) == 0 {
			d.Rows = append(d.Rows, first)
			continue
		}
		for i, e := range l.Queue {
			row := queuePageRow{}
			if i == 0 {
				row = first
			}
			row.Entry = &queuePageEntry{
				queuePagePull: queuePagePull{Number: e.PullNumber, URL: e.PullURL, User: e.User},
				Position:      e.Position,
				Priority:      e.Priority,
				Synchronous:   e.Synchronous,
				Waiting:       "unknown",
				Expires:       "never",
			}
			if e.WaitingSince != nil {
				row.Entry.Waiting = (time.Duration(e.WaitingSeconds) * time.Second).String()
				row.Entry.WaitingSince = e.WaitingSince.Format(queueTimeFormat)
			}
			if e.ExpiresAt != nil {
				row.Entry.Expires = e.ExpiresAt.Format(queueTimeFormat)
			}
			d.Rows = append(d.Rows, row)
		}
	}
	return d
}

// lockLabel names a lock as a person reads it: repo, dir, workspace, and the
// project name when there is one.
func lockLabel(l LockQueueStatus) string {
	label := fmt.Sprintf("%s: %s / %s", l.Repo, l.Path, l.Workspace)
	if l.ProjectName != "" {
		label += " / " + l.ProjectName
	}
	return label
}
