package commandlease

import (
	"time"

	"golang.org/x/sys/unix"
)

// instant is a reading of the two clocks a lease's validity is judged by.
//
// Invariant: a deadline has passed as soon as either clock says so, so no
// clock that stops or steps back can keep a lease valid. Boot time
// (CLOCK_BOOTTIME) keeps counting while the process is stopped (SIGSTOP, a
// stalled node) and while the machine sleeps, where Go's monotonic clock
// (CLOCK_MONOTONIC) stops; the wall clock is the one NTP puts right after a
// hypervisor paused the whole VM, clocks included.
type instant struct {
	boot time.Duration
	wall time.Time
}

// now reads both clocks.
func now() instant {
	var ts unix.Timespec
	// CLOCK_BOOTTIME exists on every Linux since 2.6.39; were it refused,
	// the zero reading would never pass a deadline and the wall clock alone
	// would judge.
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return instant{boot: time.Duration(ts.Nano()), wall: time.Now().Round(0)}
}

func (i instant) add(d time.Duration) instant {
	return instant{boot: i.boot + d, wall: i.wall.Add(d)}
}

// before says whether i comes before deadline on both clocks.
func (i instant) before(deadline instant) bool {
	return i.boot < deadline.boot && i.wall.Before(deadline.wall)
}

// until is how long from i until deadline passes on the first clock to reach
// it.
func (i instant) until(deadline instant) time.Duration {
	return min(deadline.boot-i.boot, deadline.wall.Sub(i.wall))
}
