package backends

import "github.com/runatlantis/atlantis/server/logging"

// nopLogger is the logger of an options struct left at its zero value.
type nopLogger struct{}

var _ logging.SimpleLogging = nopLogger{}

func (nopLogger) Debug(string, ...any)                       {}
func (nopLogger) Info(string, ...any)                        {}
func (nopLogger) Warn(string, ...any)                        {}
func (nopLogger) Err(string, ...any)                         {}
func (nopLogger) Log(logging.LogLevel, string, ...any)       {}
func (nopLogger) SetLevel(logging.LogLevel)                  {}
func (l nopLogger) With(...any) logging.SimpleLogging        { return l }
func (l nopLogger) WithHistory(...any) logging.SimpleLogging { return l }
func (nopLogger) GetHistory() string                         { return "" }
func (nopLogger) Flush() error                               { return nil }
