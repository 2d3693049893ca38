# The README's two commands are `make run` and `make test`; both install what
# they need first.
SHELL := bash
# A pipe fails when any of its commands fails, so a filtered benchmark or
# test run cannot hide a failure.
.SHELLFLAGS := -o pipefail -c
GO ?= go
PKGS = ./...
TOOLS = $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(PATH)

.PHONY: build deps lint test unit e2e chaos bench run clean

build:
	$(GO) build -o bin/atlantis .

deps:
	./scripts/install-deps.sh

lint:
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Everything CI runs: lint, unit and integration tests with real Redis, and
# the end-to-end suite with the real binary and real Terraform.
test: deps lint
	$(GO) test -count=1 -timeout 30m $(PKGS)
	$(GO) test -count=1 -race -timeout 10m ./server/core/locking/enhanced/... ./server/core/redis/ ./server/
	GO=$(GO) ./scripts/fuzz-short.sh

unit:
	$(GO) test -count=1 -short $(PKGS)

e2e: deps build
	$(GO) test -count=1 -timeout 20m -v ./e2e/...

# Faults on purpose, under traffic: Redis killed, cut off and failed over,
# replicas killed; each scenario prints a CHAOS line, the failover measurement
# REPLICATION lines (see e2e/chaos).
chaos: deps
	$(GO) test -count=1 -timeout 20m -v ./e2e/chaos/
	$(GO) test -count=1 -timeout 10m -v -run '^TestFrozenReplicaChangesNothing$$' ./e2e/

# Lock latency through db.Database against upstream's databases, interleaved,
# as BENCH lines (see runatlantis.io/docs/enhanced-locking-benchmarks.md).
bench: deps
	ATLANTIS_BENCH_SUMMARY=1 $(GO) test -count=1 -timeout 20m -v -run '^TestBenchSummary$$'  ./server/core/locking/enhanced/ | grep -E '^(BENCH|--- FAIL|FAIL|ok)'
	$(GO) test -count=1 -run '^$$' -bench 'HealthzWhileAWaitIsPending' -benchtime 5000x ./server/

# Random plan / unlock / close traffic from 8 processes sharing one Redis for
# LOAD_DURATION, every operation recorded and the history checked, with
# upstream's Redis database under the same traffic as the anchor (LOAD lines;
# see runatlantis.io/docs/enhanced-locking-reliability.md).
.PHONY: load
LOAD_DURATION ?= 60s
load: deps
	LOAD_DURATION=$(LOAD_DURATION) $(GO) test -count=1 -timeout 30m -v -run '^TestLoad$$' ./e2e/load/ | grep -E '^(LOAD|--- |FAIL|ok| {4,})'

# Every fuzz target for FUZZTIME (10s) each, one line per target (see the
# script); a failure names the input to commit as a regression seed.
.PHONY: fuzz-short
fuzz-short: deps
	GO=$(GO) ./scripts/fuzz-short.sh

# The phase plan's pull requests as stacked trees, each built, vetted and
# tested on its own (PR-SERIES lines; see CONTRIBUTING.md's six phases).
.PHONY: pr-series
pr-series: deps
	$(GO) run ./internal/tools/pr-series -go $(GO)

# The offline testdrive: two replicas, Redis, a GitHub stand-in and a story.
# It is a binary of its own, so bin/atlantis links none of its stand-ins.
run: deps build
	$(GO) build -o bin/atlantis-testdrive ./testdrive/cmd/atlantis-testdrive
	./bin/atlantis-testdrive $(ARGS)

clean:
	rm -rf bin
