package testdrive

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// lockQueue is one lock of GET /api/locks/queue-status: its holder (0 when
// free) and its queue, head first. The JSON is documented in
// runatlantis.io/docs/enhanced-locking-queue.md; the story reads it as any
// client would.
type lockQueue struct {
	Holder *struct {
		PullNumber int `json:"pull_number"`
	} `json:"holder"`
	Queue []queuedPull `json:"queue"`
}

type queuedPull struct {
	Position    int    `json:"position"`
	PullNumber  int    `json:"pull_number"`
	Priority    string `json:"priority"`
	Synchronous bool   `json:"synchronous"`
}

// holder is the pull holding the lock, or 0.
func (q lockQueue) holder() int {
	if q.Holder == nil {
		return 0
	}
	return q.Holder.PullNumber
}

// queueStatusPath is the queue API, relative to a replica's URL.
const queueStatusPath = "/api/locks/queue-status"

// getAPI decodes the JSON of an API path of replica r into v, with the
// testdrive's API secret.
func getAPI(ctx context.Context, r *Replica, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", r.URL+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Atlantis-Token", apiSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close() // nolint: errcheck
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("reading %s%s (%s): %w", r.URL, path, resp.Status, err)
	}
	return nil
}

// lockHolders asks a replica's API which pull holds each lock.
func lockHolders(ctx context.Context, r *Replica) (map[string]string, error) {
	var body struct {
		Locks []struct {
			Name   string
			PullID json.Number
		}
	}
	if err := getAPI(ctx, r, "/api/locks", &body); err != nil {
		return nil, err
	}
	holders := map[string]string{}
	for _, l := range body.Locks {
		holders[strings.TrimSuffix(l.Name, "/")] = "#" + l.PullID.String()
	}
	return holders, nil
}

// queueStatus reads a replica's queue API, by lock name (as lockName).
func queueStatus(ctx context.Context, r *Replica) (map[string]lockQueue, error) {
	var body struct {
		Success bool `json:"success"`
		Data    struct {
			Locks []struct {
				Key string `json:"key"`
				lockQueue
			} `json:"locks"`
		} `json:"data"`
	}
	if err := getAPI(ctx, r, queueStatusPath, &body); err != nil {
		return nil, err
	}
	if !body.Success {
		return nil, fmt.Errorf("%s%s answered without success", r.URL, queueStatusPath)
	}
	locks := map[string]lockQueue{}
	for _, l := range body.Data.Locks {
		locks[strings.TrimSuffix(l.Key, "/")] = l.lockQueue
	}
	return locks, nil
}

// describeQueue is a queue as the story prints it: "#4 (critical), #3 (normal)".
func describeQueue(q lockQueue) string {
	if len(q.Queue) == 0 {
		return "nobody"
	}
	var parts []string
	for _, e := range q.Queue {
		parts = append(parts, fmt.Sprintf("%d. #%d (%s)", e.Position, e.PullNumber, e.Priority))
	}
	return strings.Join(parts, ", ")
}
