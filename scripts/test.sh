#!/usr/bin/env bash
# The one test command of caldera-sidecar: lint, start a real Elasticsearch, run the whole Rust test suite, then
# run the end-to-end, delivery and sink-fault suites once more against a real OpenSearch (the second engine).
#
# Usage: scripts/test.sh [cargo test arguments] [-- test harness arguments]
#   e.g. scripts/test.sh                          everything, on Elasticsearch, then the engine suites on OpenSearch
#        scripts/test.sh --test sink -- --nocapture
#        SEARCH_ENGINE=opensearch scripts/test.sh  everything on OpenSearch only
#
# The tests get:
#   SEARCH_URL            http://127.0.0.1:PORT of the Elasticsearch shared by all tests (set it yourself to use
#                         another server; this script then neither starts nor stops one)
#   SEARCH_STATE_DIR      state dir of that server; SEARCH_SERVER_SCRIPT  scripts/search-server.sh, for tests that
#                         pause/resume/stop/start it (fault injection)
#   CALDERA_FIXTURES_DIR  recorded Caldera responses (default: the copy in tests/fixtures/caldera)
#   SEARCH_ENGINE         elasticsearch (default) or opensearch: the engine the whole suite runs against
#   OPENSEARCH_URL        an OpenSearch already running for the second pass (else one is started and stopped;
#                         when SEARCH_URL is given and OPENSEARCH_URL is not, the second pass is skipped, loudly)
# Knobs: TEST_THREADS (default 2), SKIP_LINT=1 (skip fmt and clippy), SECOND_ENGINE=none (skip the OpenSearch
# pass), and those of scripts/search-server.sh.
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
# tests/reports.rs reads the rendered PDFs the way a reader would (pdftotext, pdftoppm).
command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
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

export SEARCH_ENGINE="${SEARCH_ENGINE:-elasticsearch}"
section "Search engine: $SEARCH_ENGINE"
export SEARCH_STATE_DIR="${SEARCH_STATE_DIR:-${TMPDIR:-/tmp}/caldera-sidecar-search}"
export SEARCH_SERVER_SCRIPT="$repo/scripts/search-server.sh"
search_url_given="${SEARCH_URL:-}"
os_state_dir="${TMPDIR:-/tmp}/caldera-sidecar-opensearch"
stop_server=0
stop_opensearch=0
# shellcheck disable=SC2317 # invoked by the trap
stop_on_exit() {
  local status=$?
  if [ "$stop_server" -eq 1 ]; then
    section "Stopping $SEARCH_ENGINE"
    "${server[@]}" stop || true
  fi
  if [ "$stop_opensearch" -eq 1 ]; then
    section "Stopping OpenSearch"
    SEARCH_ENGINE=opensearch SEARCH_STATE_DIR="$os_state_dir" "${server[@]}" stop || true
  fi
  exit "$status"
}
trap stop_on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ -n "${SEARCH_URL:-}" ]; then
  echo "using SEARCH_URL=$SEARCH_URL from the environment"
else
  # A server the developer started by hand stays up; one started here is stopped on exit. SEARCH_ENGINE picks it.
  "${server[@]}" url >/dev/null 2>&1 || stop_server=1
  started="$("${server[@]}" start)"
  SEARCH_URL="${started#SEARCH_URL=}"
  echo "SEARCH_URL=$SEARCH_URL"
fi
export SEARCH_URL

# The recorded Caldera responses are vendored in tests/fixtures/caldera; CALDERA_FIXTURES_DIR overrides them.
if [ -n "${CALDERA_FIXTURES_DIR:-}" ]; then
  [ -f "$CALDERA_FIXTURES_DIR/operation_finished.json" ] || die "CALDERA_FIXTURES_DIR=$CALDERA_FIXTURES_DIR holds no recordings"
  export CALDERA_FIXTURES_DIR
  echo "CALDERA_FIXTURES_DIR=$CALDERA_FIXTURES_DIR"
else
  echo "fixtures: tests/fixtures/caldera"
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
  section "cargo test --no-fail-fast --lib --bins --tests -- ${harness_args[*]}"
  # --no-fail-fast: one failing suite must not hide the results of the others.
  cargo test --no-fail-fast --lib --bins --tests -- "${harness_args[@]}" || status=$?
  section "cargo test --benches (smoke run of every benchmark)"
  cargo test --benches || status=$?
  if [ "$SEARCH_ENGINE" = elasticsearch ] && [ "${SECOND_ENGINE:-opensearch}" = opensearch ]; then
    # The suites that exercise the engine itself (indexing, versions, bulk errors, templates, replay), once more
    # on OpenSearch; the rest does not depend on the engine. Elasticsearch is stopped first: two JVMs do not fit
    # a small CI machine.
    os_suites=(--test e2e --test delivery --test sink_faults --test settle)
    if [ -n "${OPENSEARCH_URL:-}" ]; then
      os_url="$OPENSEARCH_URL"
    elif [ -n "$search_url_given" ]; then
      os_url=""
      section "OpenSearch pass SKIPPED: SEARCH_URL was given without OPENSEARCH_URL"
    else
      if [ "$stop_server" -eq 1 ]; then
        section "Stopping Elasticsearch"
        "${server[@]}" stop || true
        stop_server=0
      fi
      section "OpenSearch"
      SEARCH_ENGINE=opensearch SEARCH_STATE_DIR="$os_state_dir" "${server[@]}" url >/dev/null 2>&1 || stop_opensearch=1
      started="$(SEARCH_ENGINE=opensearch SEARCH_STATE_DIR="$os_state_dir" "${server[@]}" start)"
      os_url="${started#SEARCH_URL=}"
    fi
    if [ -n "$os_url" ]; then
      echo "OpenSearch at $os_url"
      rm -rf "${TMPDIR:-/tmp}/caldera-sidecar-tests"
      section "cargo test ${os_suites[*]} on OpenSearch -- ${harness_args[*]}"
      SEARCH_ENGINE=opensearch SEARCH_URL="$os_url" SEARCH_STATE_DIR="$os_state_dir" \
        cargo test --no-fail-fast "${os_suites[@]}" -- "${harness_args[@]}" || status=$?
    fi
  fi
else
  section "cargo test ${cargo_test_args[*]} -- ${harness_args[*]}"
  cargo test "${cargo_test_args[@]}" -- "${harness_args[@]}" || status=$?
fi
section "cargo test exit status: $status"
exit "$status"
