package cmd

import (
	"fmt"
	"io"
	"os"
	"strings"

	upstreamcmd "github.com/runatlantis/atlantis/cmd"
	upstream "github.com/runatlantis/atlantis/server"
	"github.com/runatlantis/atlantis/server/logging"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/atlantis-enhanced/atlantis/server"
)

const (
	DryRunFlag     = "dry-run"
	ConfigDumpFlag = "config-dump"
)

// ServerCmd is upstream's server command plus the --enhanced-locking-* flags.
// Upstream's command keeps parsing, defaulting and validating every upstream
// flag; we only add ours and choose which server gets built.
type ServerCmd struct {
	Viper           *viper.Viper
	AtlantisVersion string
	Logger          logging.SimpleLogging
	// ServerCreator builds the server once the config is known; nil means the
	// real one.
	ServerCreator EnhancedServerCreator
	// Out receives the --config-dump output.
	Out io.Writer
	// SilenceOutput keeps errors off stderr, for tests.
	SilenceOutput bool
}

// EnhancedServerCreator builds a server from upstream's config and ours.
type EnhancedServerCreator interface {
	NewServer(userConfig upstream.UserConfig, config upstream.Config, enhanced server.EnhancedLockingConfig) (upstreamcmd.ServerStarter, error)
}

// DefaultServerCreator builds the real server.
type DefaultServerCreator struct{}

func (DefaultServerCreator) NewServer(userConfig upstream.UserConfig, config upstream.Config, enhanced server.EnhancedLockingConfig) (upstreamcmd.ServerStarter, error) {
	return server.NewServer(userConfig, config, enhanced)
}

// creator adapts our server creation to upstream's ServerCreator, which is
// called only after upstream has defaulted and validated its own flags.
type creator struct {
	cmd        *ServerCmd
	enhanced   server.EnhancedLockingConfig
	dryRun     bool
	configDump bool
}

func (c *creator) NewServer(userConfig upstream.UserConfig, config upstream.Config) (upstreamcmd.ServerStarter, error) {
	if c.configDump {
		if err := writeConfigDump(c.cmd.Out, userConfig, c.enhanced); err != nil {
			return nil, err
		}
	}
	if c.dryRun {
		return dryRunStarter{}, nil
	}
	return c.cmd.ServerCreator.NewServer(userConfig, config, c.enhanced)
}

// dryRunStarter stands in for the server when --dry-run only checks the config.
type dryRunStarter struct{}

func (dryRunStarter) Start() error { return nil }

// Init returns the server command.
func (s *ServerCmd) Init() *cobra.Command {
	if s.ServerCreator == nil {
		s.ServerCreator = DefaultServerCreator{}
	}
	if s.Out == nil {
		s.Out = os.Stdout
	}
	cr := &creator{cmd: s}
	up := &upstreamcmd.ServerCmd{
		ServerCreator:   cr,
		Viper:           s.Viper,
		SilenceOutput:   s.SilenceOutput,
		AtlantisVersion: s.AtlantisVersion,
		Logger:          s.Logger,
	}
	c := up.Init()

	for _, f := range enhancedFlags {
		if f.isBool {
			c.Flags().Bool(f.name, f.defaultValue() == "true", f.description)
		} else {
			c.Flags().String(f.name, f.defaultValue(), f.description)
		}
		s.Viper.BindPFlag(f.name, c.Flags().Lookup(f.name)) // nolint: errcheck
	}
	c.Flags().Bool(DryRunFlag, false, "Load and validate the configuration, then exit without starting the server.")
	c.Flags().Bool(ConfigDumpFlag, false, "Print the effective configuration as YAML, secrets redacted.")
	c.SetUsageTemplate(withEnhancedFlagsHelp(c.UsageTemplate()))

	upstreamPreRun := c.PreRunE
	c.PreRunE = func(cmd *cobra.Command, args []string) error {
		// Upstream's pre-run loads the --config file, which our keys live in too.
		if err := upstreamPreRun(cmd, args); err != nil {
			return err
		}
		enhanced, err := s.enhancedConfig()
		if err != nil {
			s.printErr(err)
			return err
		}
		cr.enhanced = enhanced
		cr.dryRun, _ = cmd.Flags().GetBool(DryRunFlag)
		cr.configDump, _ = cmd.Flags().GetBool(ConfigDumpFlag)
		return nil
	}
	return c
}

// enhancedConfig reads our flags and applies the kill switch. With the kill
// switch on, enhanced locking is off whatever the config says, and a config
// that does not check out is no error: a broken Redis setting must never
// block an emergency rollback. Valid Redis settings are kept, for the copy of
// Redis's locks the rollback makes at start.
func (s *ServerCmd) enhancedConfig() (server.EnhancedLockingConfig, error) {
	off, err := killSwitchOn()
	if err != nil {
		return server.EnhancedLockingConfig{}, err
	}
	if off {
		s.Logger.Warn("%s=true: enhanced locking is off and every lock goes to the legacy database (--locking-db-type), whatever --%s says",
			killSwitchEnv, EnhancedLockingEnabledFlag)
		cfg := server.DefaultEnhancedLockingConfig()
		// The Redis settings still say where the locks are, for the copy a
		// rollback makes at start; settings that do not check out are left
		// out rather than allowed to block the rollback.
		if configured, err := enhancedLockingConfig(s.Viper); err == nil {
			cfg.Backend, cfg.Redis = configured.Backend, configured.Redis
		} else {
			s.Logger.Warn("%s=true: the enhanced locking config does not check out (%v), so the locks of Redis are not copied into the legacy database", killSwitchEnv, err)
		}
		cfg.Enabled = false
		return cfg, nil
	}
	return enhancedLockingConfig(s.Viper)
}

func (s *ServerCmd) printErr(err error) {
	if !s.SilenceOutput {
		fmt.Fprintf(os.Stderr, "%sError: %s%s\n", "\033[31m", err.Error(), "\033[39m")
	}
}

// withEnhancedFlagsHelp adds our flags to upstream's help template, which
// lists only the flags upstream knows about.
func withEnhancedFlagsHelp(tmpl string) string {
	var b strings.Builder
	b.WriteString("\n\nEnhanced locking flags:\n\n")
	for _, f := range enhancedFlags {
		value := "=<value>"
		if f.isBool {
			value = ""
		}
		descr := f.description
		if f.defaultValue() != "" && !f.isBool {
			descr += fmt.Sprintf(" (default %q)", f.defaultValue())
		}
		fmt.Fprintf(&b, "  --%s%s\n%s\n", f.name, value, wrapHelp(descr))
	}
	b.WriteString("  --" + DryRunFlag + "\n" + wrapHelp("Load and validate the configuration, then exit without starting the server.") + "\n")
	b.WriteString("  --" + ConfigDumpFlag + "\n" + wrapHelp("Print the effective configuration as YAML, secrets redacted."))
	marker := "{{end}}{{if .HasAvailableInheritedFlags}}"
	if i := strings.Index(tmpl, marker); i >= 0 {
		return tmpl[:i] + b.String() + tmpl[i:]
	}
	return tmpl + b.String()
}

func wrapHelp(s string) string {
	var out, line strings.Builder
	for _, word := range strings.Fields(s) {
		if line.Len() > 0 && line.Len()+len(word)+1 > 80 {
			out.WriteString("      " + line.String() + "\n")
			line.Reset()
		}
		if line.Len() > 0 {
			line.WriteString(" ")
		}
		line.WriteString(word)
	}
	if line.Len() > 0 {
		out.WriteString("      " + line.String() + "\n")
	}
	return out.String()
}
