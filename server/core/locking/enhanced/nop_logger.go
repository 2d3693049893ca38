package enhanced

import "github.com/runatlantis/atlantis/server/logging"

// NopLogger discards everything. It is the logger of options left at their
// zero value; upstream's logging.NewNoopLogger needs a test to log to.
type NopLogger struct{}

var _ logging.SimpleLogging = NopLogger{}

func (NopLogger) Debug(string, ...any)                       {}
func (NopLogger) Info(string, ...any)                        {}
func (NopLogger) Warn(string, ...any)                        {}
func (NopLogger) Err(string, ...any)                         {}
func (NopLogger) Log(logging.LogLevel, string, ...any)       {}
func (NopLogger) SetLevel(logging.LogLevel)                  {}
func (l NopLogger) With(...any) logging.SimpleLogging        { return l }
func (l NopLogger) WithHistory(...any) logging.SimpleLogging { return l }
func (NopLogger) GetHistory() string                         { return "" }
func (NopLogger) Flush() error                               { return nil }
