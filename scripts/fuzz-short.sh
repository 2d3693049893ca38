#!/usr/bin/env bash
# Runs every fuzz target of the module for a short while, one after the other,
# and prints one line per target:
#
#   FUZZ <pkg> <target> execs=N new-interesting=M ok|FAIL
#
# A target that fails points at the input go wrote under the package's
# testdata/fuzz/<target>/: commit it, and it runs as a regression seed in
# every `go test`. Each target's seed corpus runs in `go test ./...` too.
#
# FUZZTIME     how long each target fuzzes (go's -fuzztime), default 10s
# FUZZPARALLEL fuzzing workers per target, default 2 (at most 2: the machine
#              has two cores)
# FUZZPKGS     the packages to search for targets, default ./...
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
fuzztime=${FUZZTIME:-10s}
parallel=${FUZZPARALLEL:-2}
if ((parallel > 2)); then
  parallel=2
fi
# A new interesting input is minimized before fuzzing goes on, for up to a
# minute by default: in a short run that would be the whole run.
minimizetime=${FUZZMINIMIZETIME:-2s}

# Only packages whose tests declare a Fuzz function can have a target, so go
# lists the targets of those alone rather than building every test binary.
candidates=()
while read -r pkg dir files; do
  for f in $files; do
    if grep -q '^func Fuzz' "$dir/$f"; then
      candidates+=("$pkg")
      break
    fi
  done
done < <($GO list -f '{{.ImportPath}} {{.Dir}} {{join .TestGoFiles " "}} {{join .XTestGoFiles " "}}' ${FUZZPKGS:-./...})
if ((${#candidates[@]} == 0)); then
  echo "fuzz-short: no fuzz targets found" >&2
  exit 1
fi

# go test -list prints a package's names, then "ok <pkg> <time>".
targets=()
names=()
list=$($GO test -list '^Fuzz' "${candidates[@]}")
while read -r line; do
  case "$line" in
  Fuzz*) names+=("$line") ;;
  ok*)
    pkg=$(awk '{print $2}' <<<"$line")
    for name in "${names[@]}"; do
      targets+=("$pkg $name")
    done
    names=()
    ;;
  esac
done <<<"$list"

# Each target starts from its seeds and testdata/fuzz alone, not from the
# inputs earlier runs cached: go first runs every input it starts from, and a
# run whose fuzztime ends before that fails.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=$work/log
failed=0
for target in "${targets[@]}"; do
  read -r pkg name <<<"$target"
  status=ok
  if ! $GO test -count=1 -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" \
    -fuzzminimizetime="$minimizetime" -parallel="$parallel" -timeout=10m "$pkg" \
    -args -test.fuzzcachedir="$work/cache/$pkg" >"$log" 2>&1; then
    status=FAIL
    failed=1
  fi
  # go prints its counts every few seconds and once more at the end.
  counts=$(grep -E '^fuzz: elapsed: .*execs: [0-9]+' "$log" | tail -n 1 || true)
  execs=$(sed -nE 's/.*execs: ([0-9]+).*/\1/p' <<<"$counts")
  interesting=$(sed -nE 's/.*new interesting: ([0-9]+).*/\1/p' <<<"$counts")
  echo "FUZZ $pkg $name execs=${execs:-0} new-interesting=${interesting:-0} $status"
  if [[ $status == FAIL ]]; then
    sed 's/^/    /' "$log"
    written=$(sed -nE 's/.*Failing input written to (testdata\/fuzz\/[^ ]+).*/\1/p' "$log" | tail -n 1)
    if [[ -n $written ]]; then
      dir=$($GO list -f '{{.Dir}}' "$pkg")
      echo "    the failing input is ${dir#"$PWD"/}/$written: fix the defect, and commit the input as its regression seed"
    fi
  fi
done
exit "$failed"
