#!/usr/bin/env bash
# Installs what the tests, the e2e suite and the testdrive need on a fresh
# Debian machine: redis-server, git, chromium (the queue page's browser test),
# promtool (the monitoring/ rule checks and rule unit tests; Debian ships it in
# the prometheus package, whose server is installed but never started) and a C
# toolchain (the race detector needs cgo) from Debian, Terraform 1.5.7
# built from source with the Go toolchain (no download from outside the module
# proxy). Safe to run again: it only installs what is missing. Installing
# packages needs root or sudo.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools/bin"
tf_version=1.5.7
export CHECKPOINT_DISABLE=1

# cc_works says whether the C compiler go uses for cgo builds a program.
cc_works() {
  local cc dir
  cc=$(go env CC)
  dir=$(mktemp -d)
  printf '#include <stdlib.h>\nint main(void) { return EXIT_SUCCESS; }\n' >"$dir/cc.c"
  if "$cc" -o "$dir/cc" "$dir/cc.c" >/dev/null 2>&1; then
    rm -rf "$dir"
    return 0
  fi
  rm -rf "$dir"
  return 1
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v git >/dev/null 2>&1 || missing+=(git)
[ -x /usr/lib/git-core/git-http-backend ] || missing+=(git)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
cc_works || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]} with apt-get"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  # The prometheus package's maintainer scripts start its server through
  # invoke-rc.d, which asks policy-rc.d first: where the machine has no
  # policy-rc.d (a container has one that forbids it), one that answers 101
  # ("action forbidden") stands in for the install, so no service is started,
  # with or without systemd. It is removed afterwards, also on failure.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    trap '$sudo_cmd rm -f "$policy"' EXIT
    printf '#!/bin/sh\n# install-deps.sh: no service starts while packages are installed\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null
    $sudo_cmd chmod 755 "$policy"
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -e "$policy" ] && grep -q '^# install-deps.sh:' "$policy"; then
    $sudo_cmd rm -f "$policy"
    trap - EXIT
  fi
  # On a machine that runs systemd the package also enables its unit for the
  # next boot; the tests only need promtool, so the server stays off.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $sudo_cmd systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
cc_works || { echo "install-deps: $(go env CC) cannot build a C program, which go test -race needs" >&2; exit 1; }

# terraform_version prints the installed Terraform's version line, or nothing.
# The whole output is read before it is matched: piping it into head under
# pipefail fails when terraform is cut off by SIGPIPE.
terraform_version() {
  local out
  out=$(TF_CLI_CONFIG_FILE= "$tools/terraform" version 2>/dev/null) || return 0
  printf '%s\n' "${out%%$'\n'*}"
}

if [ "$(terraform_version)" != "Terraform v$tf_version" ]; then
  echo "install-deps: building Terraform $tf_version into $tools (a few minutes on a fresh machine)"
  mkdir -p "$tools"
  (cd "$root" && GOBIN="$tools" go install "github.com/hashicorp/terraform@v$tf_version")
fi
# promtool_version prints promtool's first version line, read whole for the
# same reason as terraform_version's.
promtool_version() {
  local out
  out=$(promtool --version 2>&1) || return 0
  printf '%s\n' "${out%%$'\n'*}"
}

echo "install-deps: redis-server $(redis-server --version | awk '{print $3}'), $(terraform_version), $(chromium --version 2>/dev/null), $(promtool_version), C compiler $(go env CC)"
