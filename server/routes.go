package server

import (
	"encoding/json"
	"net/http"

	"github.com/atlantis-enhanced/atlantis/server/core/locking/enhanced/backends"
)

// registerRoutes adds our routes to upstream's router before upstream's
// Start registers its own: gorilla/mux serves the first match, so ours win
// where paths are shared. They pass through upstream's middleware, and with
// it its web basic auth.
func (s *Server) registerRoutes() {
	s.Router.HandleFunc("/healthz", s.Healthz).Methods("GET")
	if s.Adapter != nil {
		s.Router.HandleFunc("/readyz", s.Readyz).Methods("GET")
	}
	if s.backend != nil && s.backend.client != nil {
		dedupe := &deliveryDeduper{
			next:      s.VCSEventsController.Post,
			sources:   upstreamDeliverySources(s.webhookSecrets),
			client:    s.backend.client,
			keyPrefix: s.Config.Redis.KeyPrefix,
			logger:    s.Logger,
		}
		s.Router.Handle("/events", dedupe).Methods("POST")
	}
	// Both answer with the queue off too, with the locks alone, so a client
	// or a bookmark need not know the flag.
	s.Router.Handle("/api/locks/queue-status", s.newQueueStatusAPI()).Methods("GET")
	s.Router.Handle("/queue", s.newQueuePage()).Methods("GET")
	if s.queue != nil {
		// Upstream's index path; without the queue it stays upstream's page.
		s.Router.Handle("/", s.newIndexWithQueueLink()).Methods("GET")
	}
}

// HealthzResponse is upstream's /healthz body plus enhanced locking's state.
type HealthzResponse struct {
	Status          string                `json:"status"`
	EnhancedLocking EnhancedLockingHealth `json:"enhanced_locking"`
}

// EnhancedLockingHealth says whether enhanced locking is on, on which backend,
// and where lock operations go right now.
type EnhancedLockingHealth struct {
	Enabled bool   `json:"enabled"`
	Backend string `json:"backend"`
	// Status is the backend's health: healthy, degraded, unhealthy, or
	// disabled when enhanced locking is off.
	Status string `json:"status"`
	// ActiveBackend is the backend, or legacy-fallback while Redis is out of
	// reach and the fallback is on.
	ActiveBackend string `json:"active_backend"`
	// NonEnhancedWrites counts the locks seen that replicas without enhanced
	// locking wrote: while any do, a lock can be granted twice (Redis
	// backend only).
	NonEnhancedWrites *backends.NonEnhancedWrites `json:"non_enhanced_writes,omitempty"`
}

// Healthz answers like upstream's liveness probe, always 200 while the
// process runs, and adds the enhanced locking state.
func (s *Server) Healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	resp := HealthzResponse{Status: "ok", EnhancedLocking: s.enhancedHealth()}
	b, _ := json.MarshalIndent(resp, "", "  ") // nolint: errchkjson
	w.Write(b)                                 // nolint: errcheck
}

func (s *Server) enhancedHealth() EnhancedLockingHealth {
	if s.Adapter == nil {
		return EnhancedLockingHealth{Enabled: false, Backend: "legacy", Status: "disabled", ActiveBackend: "legacy"}
	}
	health := EnhancedLockingHealth{
		Enabled:       true,
		Backend:       s.Config.Backend,
		Status:        s.backend.status(),
		ActiveBackend: s.Adapter.ActiveBackend(),
	}
	if r, ok := s.backend.Backend.(*backends.Redis); ok {
		seen := r.NonEnhancedWrites()
		health.NonEnhancedWrites = &seen
	}
	return health
}

// Readyz is upstream's readiness probe extended to enhanced locking: a
// replica is ready when the store serving its locks right now answers, the
// backend normally, the legacy database during a fallback.
func (s *Server) Readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	active := s.Adapter.ActiveBackend()
	if err := s.Adapter.Ping(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		b, _ := json.Marshal(map[string]string{"status": "error", "enhanced_locking": active, "error": err.Error()}) // nolint: errchkjson
		w.Write(b)                                                                                                   // nolint: errcheck
		return
	}
	b, _ := json.Marshal(map[string]string{"status": "ok", "enhanced_locking": active}) // nolint: errchkjson
	w.Write(b)                                                                          // nolint: errcheck
}
