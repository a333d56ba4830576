#!/usr/bin/env bash
# The one test command of caldera-sidecar: lint, start a real Elasticsearch, run the whole Rust test suite.
#
# Usage: scripts/test.sh [cargo test arguments] [-- test harness arguments]
#   e.g. scripts/test.sh                          everything
#        scripts/test.sh --test sink -- --nocapture
#
# The tests get:
#   SEARCH_URL            http://127.0.0.1:PORT of the Elasticsearch shared by all tests (set it yourself to use
#                         another server; this script then neither starts nor stops one)
#   SEARCH_STATE_DIR      state dir of that server; SEARCH_SERVER_SCRIPT  scripts/search-server.sh, for tests that
#                         pause/resume/stop/start it (fault injection)
#   CALDERA_FIXTURES_DIR  recorded Caldera responses (default ../shared/fixtures/caldera when it exists)
# Knobs: TEST_THREADS (default 2), SKIP_LINT=1 (skip fmt and clippy), and those of scripts/search-server.sh.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

section() { printf '\n==== %s ====\n' "$*"; }
die() {
  echo "test.sh: error: $*" >&2
  exit 1
}

# Split "$@" at the first "--": before it for cargo test, after it for the test harness.
cargo_test_args=(--all-targets)
harness_args=(--test-threads="${TEST_THREADS:-2}")
after_dashes=0
for arg in "$@"; do
  if [ "$after_dashes" -eq 0 ] && [ "$arg" = "--" ]; then
    after_dashes=1
  elif [ "$after_dashes" -eq 1 ]; then
    harness_args+=("$arg")
  else
    cargo_test_args+=("$arg")
  fi
done

section "Prerequisites"
server=(bash "$repo/scripts/search-server.sh")
missing=()
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# tests/assets.rs checks the systemd unit with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
"${server[@]}" java-home >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    sudo -n true 2>/dev/null || die "missing: ${missing[*]}; install them (e.g. apt-get install ${missing[*]})"
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null 2>&1 || die "missing: ${missing[*]} (no apt-get here: install them by hand)"
  echo "installing: ${missing[*]}"
  "${sudo[@]}" apt-get -qq update >/dev/null
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup)"
for component in rustfmt clippy; do
  tool=fmt
  [ "$component" = clippy ] && tool=clippy
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "cargo $tool is missing and there is no rustup to add $component"
    rustup component add "$component" >/dev/null
  fi
done
echo "$(cargo --version), java $("${server[@]}" java-home)"

if [ "${SKIP_LINT:-0}" != 1 ]; then
  section "cargo fmt --all -- --check"
  cargo fmt --all -- --check
  section "cargo clippy --all-targets -- -D warnings"
  cargo clippy --all-targets -- -D warnings
fi

# Build first, so a compile error fails fast and Elasticsearch does not run during the build.
section "Build tests: cargo test ${cargo_test_args[*]} --no-run"
cargo test "${cargo_test_args[@]}" --no-run

section "Elasticsearch"
export SEARCH_STATE_DIR="${SEARCH_STATE_DIR:-${TMPDIR:-/tmp}/caldera-sidecar-search}"
export SEARCH_SERVER_SCRIPT="$repo/scripts/search-server.sh"
stop_server=0
# shellcheck disable=SC2317 # invoked by the trap
stop_on_exit() {
  local status=$?
  if [ "$stop_server" -eq 1 ]; then
    section "Stopping Elasticsearch"
    "${server[@]}" stop || true
  fi
  exit "$status"
}
trap stop_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ -n "${SEARCH_URL:-}" ]; then
  echo "using SEARCH_URL=$SEARCH_URL from the environment"
else
  # A server the developer started by hand stays up; one started here is stopped on exit.
  "${server[@]}" url >/dev/null 2>&1 || stop_server=1
  started="$("${server[@]}" start)"
  SEARCH_URL="${started#SEARCH_URL=}"
  echo "SEARCH_URL=$SEARCH_URL"
fi
export SEARCH_URL

if [ -z "${CALDERA_FIXTURES_DIR:-}" ] && [ -d "$repo/../shared/fixtures/caldera" ]; then
  CALDERA_FIXTURES_DIR="$(cd "$repo/../shared/fixtures/caldera" && pwd)"
fi
if [ -n "${CALDERA_FIXTURES_DIR:-}" ]; then
  export CALDERA_FIXTURES_DIR
  echo "CALDERA_FIXTURES_DIR=$CALDERA_FIXTURES_DIR"
else
  echo "CALDERA_FIXTURES_DIR is not set and ../shared/fixtures/caldera does not exist"
fi

# Spool and dead-letter folders of earlier runs (tests/support/app.rs).
rm -rf "${TMPDIR:-/tmp}/caldera-sidecar-tests"

status=0
# The Caldera plugin (Python, runs inside Caldera): its own unit tests, with the standard library only.
if command -v python3 >/dev/null 2>&1; then
  section "Caldera plugin: python3 -m unittest discover -s caldera-plugin/tests"
  python3 -m unittest discover -s "$repo/caldera-plugin/tests" || status=$?
else
  echo "test.sh: python3 not found: the Caldera plugin's tests did not run" >&2
  status=1
fi
if [ "$#" -eq 0 ]; then
  # Benchmarks run as smoke tests without harness flags: criterion and the pipeline program
  # have their own command lines (--test-threads is libtest's).
  section "cargo test --lib --bins --tests -- ${harness_args[*]}"
  cargo test --lib --bins --tests -- "${harness_args[@]}" || status=$?
  section "cargo test --benches (smoke run of every benchmark)"
  cargo test --benches || status=$?
else
  section "cargo test ${cargo_test_args[*]} -- ${harness_args[*]}"
  cargo test "${cargo_test_args[@]}" -- "${harness_args[@]}" || status=$?
fi
section "cargo test exit status: $status"
exit "$status"
