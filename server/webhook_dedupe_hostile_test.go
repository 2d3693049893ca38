package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/runatlantis/atlantis/server/logging"
	. "github.com/runatlantis/atlantis/testing"

	"github.com/atlantis-enhanced/atlantis/testing/redistest"
)

// TestDeliveryScriptsSurviveHostileRecords: whatever the records key holds
// (another Redis type, an expiry no clock reaches, odd members), each
// delivery script does its job or writes nothing, and the error names the key
// and the fix.
func TestDeliveryScriptsSurviveHostileRecords(t *testing.T) {
	client := redistest.Start(t).Client(t)
	ctx := context.Background()
	d := &deliveryDeduper{client: client, keyPrefix: "pfx:"}
	key := d.recordsKey()
	zadd := func(score float64, member string) func() error {
		return func() error { return client.ZAdd(ctx, key, redis.Z{Score: score, Member: member}).Err() }
	}
	retype := func(write func() error) func() error {
		return func() error { return errors.Join(client.Del(ctx, key).Err(), write()) }
	}
	hostile := map[string]func() error{
		"a string":             retype(func() error { return client.Set(ctx, key, "x", 0).Err() }),
		"a hash":               retype(func() error { return client.HSet(ctx, key, "r", "1").Err() }),
		"a list":               retype(func() error { return client.RPush(ctx, key, "r").Err() }),
		"a set":                retype(func() error { return client.SAdd(ctx, key, "r").Err() }),
		"an endless record":    zadd(math.Inf(1), "forever"),
		"a record past 2^53":   zadd(1e300, "far"),
		"a record before time": zadd(math.Inf(-1), "old"),
		"odd members":          zadd(4e12, "new\nline|x"),
	}
	ops := map[string]func(d *deliveryDeduper) error{
		"claim": func(d *deliveryDeduper) error {
			_, err := d.claim(ctx, "new")
			return err
		},
		"seen": func(d *deliveryDeduper) error {
			_, err := d.seen(ctx, "r")
			return err
		},
		// confirm and forget log what fails.
		"confirm": func(d *deliveryDeduper) error {
			d.confirm("GitHub", guid1, "new")
			return loggedWarning(d.logger)
		},
		"forget": func(d *deliveryDeduper) error {
			d.forget("GitHub", guid1, "r", 1)
			return loggedWarning(d.logger)
		},
	}
	for name, set := range hostile {
		for opName, op := range ops {
			t.Run(name+"/"+opName, func(t *testing.T) {
				Ok(t, client.FlushAll(ctx).Err())
				Ok(t, zadd(4e12, "r")())
				Ok(t, set())
				before, err := client.Dump(ctx, key).Result()
				Ok(t, err)
				d := &deliveryDeduper{client: client, keyPrefix: "pfx:", logger: logging.NewNoopLogger(t).WithHistory()}
				err = op(d)
				if err == nil {
					return
				}
				after, derr := client.Dump(ctx, key).Result()
				Ok(t, derr)
				Assert(t, before == after, "%s failed (%v) after changing the records", opName, err)
				Assert(t, strings.Contains(err.Error(), fmt.Sprintf("%q", key)) && strings.Contains(err.Error(), "redis-cli DEL"),
					"error does not name the key and the fix: %v", err)
			})
		}
	}
}

// loggedWarning is the warnings logger has written, as an error, or nil.
func loggedWarning(logger logging.SimpleLogging) error {
	if h := logger.GetHistory(); strings.Contains(h, "[WARN]") {
		return errors.New(h)
	}
	return nil
}
