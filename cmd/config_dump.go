package cmd

import (
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"

	upstream "github.com/runatlantis/atlantis/server"
	"go.yaml.in/yaml/v3"

	"github.com/atlantis-enhanced/atlantis/server"
)

const redacted = "<redacted>"

// writeConfigDump prints the effective configuration with the keys of the
// --config file, so the output can be read back as one.
func writeConfigDump(out io.Writer, userConfig upstream.UserConfig, enhanced server.EnhancedLockingConfig) error {
	values := upstreamConfigValues(userConfig)
	for _, f := range enhancedFlags {
		v := f.get(enhanced)
		if f.secret && v != "" {
			v = redacted
		}
		values[f.name] = v
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	doc := &yaml.Node{Kind: yaml.MappingNode}
	for _, k := range keys {
		var valueNode yaml.Node
		if err := valueNode.Encode(values[k]); err != nil {
			return fmt.Errorf("encoding config key %s: %w", k, err)
		}
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k}, &valueNode)
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		return fmt.Errorf("encoding config dump: %w", err)
	}
	_, err = out.Write(b)
	return err
}

// upstreamConfigValues maps every mapstructure key of upstream's UserConfig to
// its value, secrets redacted. Reflection keeps the dump complete when
// upstream adds flags.
func upstreamConfigValues(c upstream.UserConfig) map[string]any {
	values := map[string]any{}
	v := reflect.ValueOf(c)
	t := v.Type()
	for i := range t.NumField() {
		key := t.Field(i).Tag.Get("mapstructure")
		if key == "" || !t.Field(i).IsExported() {
			continue
		}
		field := v.Field(i).Interface()
		if isSecretKey(key) && !v.Field(i).IsZero() {
			field = redacted
		}
		values[key] = field
	}
	return values
}

// isSecretKey tells config keys holding credentials from those holding paths
// to them, which are safe to show.
func isSecretKey(key string) bool {
	if strings.HasSuffix(key, "-file") || strings.HasSuffix(key, "-dir") {
		return false
	}
	for _, word := range []string{"token", "secret", "password", "app-key", "webhook-http-headers", "webhooks"} {
		if strings.Contains(key, word) {
			return true
		}
	}
	return false
}
