package queue

import "sync"

// pullMutexes serialises work per pull within this process. Its zero value
// is ready to use.
//
// Invariant: an entry is in the map exactly while some caller holds or waits
// for its mutex (users > 0), so the map stays as small as the pulls being
// worked on.
type pullMutexes struct {
	mu sync.Mutex
	m  map[pullKey]*pullMutex
}

type pullMutex struct {
	sync.Mutex
	users int
}

// lock returns once no other caller holds k's mutex; the returned function
// lets it go.
func (p *pullMutexes) lock(k pullKey) (unlock func()) {
	p.mu.Lock()
	if p.m == nil {
		p.m = map[pullKey]*pullMutex{}
	}
	m := p.m[k]
	if m == nil {
		m = &pullMutex{}
		p.m[k] = m
	}
	m.users++
	p.mu.Unlock()

	m.Lock()
	return func() {
		m.Unlock()
		p.mu.Lock()
		if m.users--; m.users == 0 {
			delete(p.m, k)
		}
		p.mu.Unlock()
	}
}
