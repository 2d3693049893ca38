#!/usr/bin/env bash
# Installs what the tests, the e2e suite and the testdrive need on a fresh
# Debian machine: redis-server and git from Debian, Terraform 1.5.7 built
# from source with the Go toolchain (no download from outside the module
# proxy). Safe to run again: it only installs what is missing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools/bin"
tf_version=1.5.7
export CHECKPOINT_DISABLE=1

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v git >/dev/null 2>&1 || missing+=(git)
[ -x /usr/lib/git-core/git-http-backend ] || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]} with apt-get"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! TF_CLI_CONFIG_FILE= "$tools/terraform" version 2>/dev/null | head -n1 | grep -q "v$tf_version\$"; then
  echo "install-deps: building Terraform $tf_version into $tools (a few minutes on a fresh machine)"
  mkdir -p "$tools"
  (cd "$root" && GOBIN="$tools" go install "github.com/hashicorp/terraform@v$tf_version")
fi
echo "install-deps: redis-server $(redis-server --version | awk '{print $3}'), terraform $(TF_CLI_CONFIG_FILE= "$tools/terraform" version | head -n1 | awk '{print $2}')"
