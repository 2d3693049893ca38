package server

import (
	"bytes"
	"html"
	"net/http"
	"sync"
)

// indexLinkAnchor is the heading of the locks section of upstream's index
// page (upstream's web_templates/templates/index.html.tmpl). The link to the
// queue page goes right after it. TestIndexLinkAnchor fails when an upstream
// upgrade changes it: find the new heading and update this constant.
const indexLinkAnchor = `<p class="title-heading small"><strong>Locks</strong></p>`

// indexWithQueueLink serves upstream's index page with a link to /queue
// under its locks heading. Upstream's template stays upstream's: its handler
// renders into a buffer and the link is inserted at the anchor. Without the
// anchor, or when the page is an error, the page goes out unchanged.
type indexWithQueueLink struct {
	index      http.HandlerFunc
	link       []byte
	warnOnce   sync.Once
	warnMissed func()
}

func (s *Server) newIndexWithQueueLink() *indexWithQueueLink {
	link := `<p id="queue-link" style="text-align: center"><a href="` + html.EscapeString(s.AtlantisURL.Path) + `/queue">Lock queue</a></p>`
	return &indexWithQueueLink{
		index: s.Index,
		link:  []byte(link),
		warnMissed: func() {
			s.Logger.Warn("the index page has no %q: serving it without the link to the lock queue (/queue); "+
				"indexLinkAnchor in server/index_link.go needs the locks heading of this upstream version", indexLinkAnchor)
		},
	}
}

func (h *indexWithQueueLink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	page := &bufferedResponse{header: w.Header()}
	h.index(page, r)
	page.WriteHeader(http.StatusOK) // for a handler that wrote nothing
	body := page.body.Bytes()
	if page.status == http.StatusOK {
		var ok bool
		if body, ok = insertAfter(body, []byte(indexLinkAnchor), h.link); !ok {
			h.warnOnce.Do(h.warnMissed)
		}
	}
	// A Content-Length set for the page as rendered no longer fits it.
	w.Header().Del("Content-Length")
	w.WriteHeader(page.status)
	w.Write(body) // nolint: errcheck
}

// insertAfter returns page with insert after the first anchor, or page
// unchanged and false when there is no anchor.
func insertAfter(page, anchor, insert []byte) ([]byte, bool) {
	i := bytes.Index(page, anchor)
	if i < 0 {
		return page, false
	}
	at := i + len(anchor)
	out := make([]byte, 0, len(page)+len(insert))
	out = append(out, page[:at]...)
	out = append(out, insert...)
	return append(out, page[at:]...), true
}

// bufferedResponse holds a handler's response until it is sent. Headers go
// straight to the real writer's, which sends none before WriteHeader.
type bufferedResponse struct {
	header http.Header
	// status is the first status written, 0 before one is.
	status int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header { return b.header }

// Write and WriteHeader keep the status net/http would send: the first one
// written, or 200 when the body comes first.
func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.WriteHeader(http.StatusOK)
	return b.body.Write(p)
}

func (b *bufferedResponse) WriteHeader(status int) {
	if b.status == 0 {
		b.status = status
	}
}
