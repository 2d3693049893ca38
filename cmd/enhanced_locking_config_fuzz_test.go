package cmd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	upstreamcmd "github.com/runatlantis/atlantis/cmd"
	upstream "github.com/runatlantis/atlantis/server"
	. "github.com/runatlantis/atlantis/testing"
	"github.com/spf13/viper"
)

// fuzzedConfigKeys are the keys FuzzEnhancedLockingConfig sets: every
// --enhanced-locking-* flag, and upstream's --locking-db-type, which ours are
// checked against.
func fuzzedConfigKeys() []string {
	keys := []string{upstreamcmd.LockingDBType}
	for _, f := range enhancedFlags {
		keys = append(keys, f.name)
	}
	return keys
}

// fixWords start the part of an error that says what to do.
var fixWords = []string{"use ", "must be ", "add ", "set ", "drop ", "give ", "remove ", "choose ", "close ", "e.g."}

// FuzzEnhancedLockingConfig sets two config keys to arbitrary values, as
// flags (or env vars: both reach viper as strings) or as YAML in a --config
// file, and checks:
//   - a config that is refused is refused in one line that names one of the
//     flags set and says what to do, and never shows the password;
//   - a config that is accepted reads back the same from its --config-dump,
//     and from its values given again as flags: what is accepted is what is
//     meant, and an operator can keep it.
func FuzzEnhancedLockingConfig(f *testing.F) {
	dir := f.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	rules := filepath.Join(dir, "rules.yaml")
	Ok(f, os.WriteFile(ca, []byte("pem"), 0o600))
	Ok(f, os.WriteFile(rules, []byte("rules:\n  - repo: acme/*\n    priority: high\n"), 0o600))
	keys := fuzzedConfigKeys()
	index := func(name string) uint8 {
		for i, k := range keys {
			if k == name {
				return uint8(i)
			}
		}
		f.Fatalf("no key %s", name)
		return 0
	}
	for _, seed := range []struct {
		a, valueA, b, valueB string
		asFile               bool
	}{
		{EnhancedLockingEnabledFlag, "true", EnhancedLockingBackendFlag, "redis", false},
		{EnhancedLockingRedisAddrsFlag, "a:1, b:2", EnhancedLockingRedisModeFlag, "cluster", false},
		{EnhancedLockingRedisAddrsFlag, "[a:1, b:2]", EnhancedLockingRedisModeFlag, "sentinel", true},
		{EnhancedLockingRedisAddrsFlag, "[::1]:6379,", EnhancedLockingRedisDBFlag, "-1", false},
		{EnhancedLockingRedisDBFlag, "{a: 1}", EnhancedLockingRedisPoolSizeFlag, "1.5", true},
		{EnhancedLockingBackendFlag, "[redis]", EnhancedLockingRedisKeyPrefixFlag, "[a, b]", true},
		{EnhancedLockingRedisKeyPrefixFlag, "{atlantis}:", EnhancedLockingRedisPasswordFlag, " hunter2 ", false},
		{EnhancedLockingRedisKeyPrefixFlag, "prod:", EnhancedLockingRedisPasswordFlag, "hunter2", false},
		{EnhancedLockingRedisTLSCAFileFlag, ca, EnhancedLockingRedisTLSEnabledFlag, "true", false},
		{EnhancedLockingRedisTLSCAFileFlag, dir, EnhancedLockingRedisTLSInsecureFlag, "1", false},
		{EnhancedLockingPriorityRulesFlag, rules, EnhancedLockingPriorityQueueFlag, "yes", true},
		{EnhancedLockingQueueTimeoutFlag, "9223372036854775807ns", EnhancedLockingCommandLeaseTTLFlag, "999ms", false},
		{EnhancedLockingWaitTimeoutFlag, "0", EnhancedLockingRetryBackoffFlag, "1e3", true},
		{EnhancedLockingDeadlockResolutionFlag, "release-victim", EnhancedLockingEnabledFlag, "T", false},
		{EnhancedLockingFallbackFlag, "boltdb", upstreamcmd.LockingDBType, "redis", false},
		{EnhancedLockingReaperRateFlag, "0x10", EnhancedLockingReaperDryRunFlag, "~", true},
		{EnhancedLockingHealthCheckIntervalFlag, "2562048h", EnhancedLockingRetryMaxAttemptsFlag, "9223372036854775808", false},
	} {
		f.Add(index(seed.a), seed.valueA, index(seed.b), seed.valueB, seed.asFile)
	}

	f.Fuzz(func(t *testing.T, a uint8, valueA string, b uint8, valueB string, asFile bool) {
		keyA, keyB := keys[int(a)%len(keys)], keys[int(b)%len(keys)]
		v := viper.New()
		if asFile {
			// Only files that hold just these keys: a value may be YAML
			// that opens another key, which the checks below do not expect.
			v.SetConfigType("yaml")
			doc := fmt.Sprintf("%s: %s\n%s: %s\n", keyA, valueA, keyB, valueB)
			if v.ReadConfig(strings.NewReader(doc)) != nil || !onlyKeys(v, keyA, keyB) {
				return // upstream reports a file it cannot read itself
			}
		} else {
			v.Set(keyA, valueA)
			v.Set(keyB, valueB)
		}
		cfg, err := enhancedLockingConfig(v)
		if asFile {
			// A value of the wrong shape is refused (the error names the
			// first bad key in flag order, checked below).
			for _, key := range []string{keyA, keyB} {
				if shape := notOneValue(v, key); shape != "" {
					Assert(t, err != nil, "--%s given %s in a config file is accepted", key, shape)
				}
			}
		}
		if err != nil {
			checkConfigError(t, err, keyA, keyB, v)
			return
		}
		lockingDBType := v.GetString(upstreamcmd.LockingDBType)

		// Read back from the dump, as a config file.
		var dump bytes.Buffer
		Ok(t, writeConfigDump(&dump, upstream.UserConfig{LockingDBType: lockingDBType}, cfg))
		fromDump := viper.New()
		fromDump.SetConfigType("yaml")
		Ok(t, fromDump.ReadConfig(&dump))
		want := cfg
		if want.Redis.Password != "" {
			want.Redis.Password = redacted
		}
		got, err := enhancedLockingConfig(fromDump)
		Ok(t, err)
		Equals(t, want, got)

		// Read back from its values as flags.
		asFlags := viper.New()
		asFlags.Set(upstreamcmd.LockingDBType, lockingDBType)
		for _, flag := range enhancedFlags {
			asFlags.Set(flag.name, flag.get(cfg))
		}
		got, err = enhancedLockingConfig(asFlags)
		Ok(t, err)
		Equals(t, cfg, got)
	})
}

// onlyKeys says whether the config v read holds keys (and what they nest)
// and no other.
func onlyKeys(v *viper.Viper, keys ...string) bool {
	for _, k := range v.AllKeys() {
		ours := false
		for _, key := range keys {
			ours = ours || k == key || strings.HasPrefix(k, key+".")
		}
		if !ours {
			return false
		}
	}
	return true
}

// notOneValue describes the value of key in a config file when it is not
// what a flag could give: a mapping, a list (which only the Redis addresses
// may be), or a list of lists or mappings. It is "" otherwise, and for
// upstream's keys, which upstream checks.
func notOneValue(v *viper.Viper, key string) string {
	if key == upstreamcmd.LockingDBType {
		return ""
	}
	switch value := v.Get(key).(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		if key != EnhancedLockingRedisAddrsFlag {
			return "a list"
		}
		for _, item := range value {
			switch item.(type) {
			case map[string]any, []any:
				return "a list of lists or mappings"
			}
		}
	}
	return ""
}

// checkConfigError checks that err names one of the keys set, says what to
// do, fits on one line and does not show the password.
func checkConfigError(t *testing.T, err error, keyA, keyB string, v *viper.Viper) {
	t.Helper()
	msg := err.Error()
	Assert(t, !strings.Contains(msg, "\n"), "the error is not one line: %q", msg)
	Assert(t, strings.Contains(msg, "--"+keyA) || strings.Contains(msg, "--"+keyB),
		"the error names neither --%s nor --%s: %s", keyA, keyB, msg)
	fix := false
	for _, w := range fixWords {
		fix = fix || strings.Contains(msg, w)
	}
	Assert(t, fix, "the error does not say what to do: %s", msg)
	// The same config with a password that no message could contain by
	// chance must not show it either.
	const marker = "Pw-4b1d9e-marker"
	v.Set(EnhancedLockingRedisPasswordFlag, marker)
	if _, err := enhancedLockingConfig(v); err != nil {
		Assert(t, !strings.Contains(err.Error(), marker), "the error shows the password: %s", err)
	}
}
