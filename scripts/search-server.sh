#!/usr/bin/env bash
# A real search engine for the integration tests: one single-node server on 127.0.0.1, shared by all tests.
# Elasticsearch by default; SEARCH_ENGINE=opensearch runs OpenSearch instead (same commands, same output).
#
# Usage: scripts/search-server.sh start [-E setting=value ...] | stop | url | status | pause | resume | java-home
#   start   download (once, via Maven) and unpack Elasticsearch into the cache, start it on a free port with a
#           fresh data dir, wait until the cluster is yellow, print "SEARCH_URL=http://127.0.0.1:PORT" on stdout.
#           If one is already running and healthy in the same state dir, just print its URL.
#           Extra arguments are passed to Elasticsearch (e.g. -E some.setting=value).
#   stop    stop it (TERM, KILL after 30 s) and remove its data dir. Succeeds when nothing is running.
#   url     print the URL of the running server (exit 1 when none runs).
#   status  print running / paused / stopped, the URL and the pids.
#   pause   SIGSTOP the Elasticsearch server JVM (it accepts connections but never answers); resume: SIGCONT.
#   java-home  print the JDK (17+) that would run Elasticsearch (exit 1 when there is none).
#
# Environment:
#   SEARCH_ENGINE          elasticsearch (default) or opensearch
#   ES_VERSION             Elasticsearch version (default 8.19.21; Maven artifact
#                          org.elasticsearch.distribution.integ-test-zip:elasticsearch:VERSION:zip, no bundled JDK)
#   OPENSEARCH_VERSION     OpenSearch version (default 2.19.4; Maven artifact
#                          org.opensearch.distribution.integ-test-zip:opensearch:VERSION:zip, no bundled JDK)
#   CALDERA_SIDECAR_CACHE  where the unpacked distribution is kept (default $HOME/.cache/caldera-sidecar;
#                          as root /var/cache/caldera-sidecar, because the service user cannot enter /root).
#                          The downloaded zip itself is cached by Maven in ~/.m2.
#   SEARCH_STATE_DIR       url, pid, es.pid, port, console.log, data/, logs/, config/, tmp/
#                          (default ${TMPDIR:-/tmp}/caldera-sidecar-search)
#   SEARCH_PORT            HTTP port to use (default: the previous run's port if it is free, else a free port)
#   SEARCH_HEAP            JVM heap (default 512m); ES_JAVA_OPTS is appended
#   SEARCH_START_TIMEOUT   seconds to wait for yellow (default 120)
#   SEARCH_USER            as root, Elasticsearch (which refuses root) runs as this system user
#                          (default sidecar-search, created when missing). Not used when not root.
#   ES_JAVA_HOME / JAVA_HOME  JDK 17+ to use (otherwise java on PATH or /usr/lib/jvm/*)
set -euo pipefail

ES_VERSION="${ES_VERSION:-8.19.21}"
OPENSEARCH_VERSION="${OPENSEARCH_VERSION:-2.19.4}"
ENGINE="${SEARCH_ENGINE:-elasticsearch}"
# Per engine: the Maven artifact, the unpacked directory and start script, the environment variables its
# launcher reads, and the settings only one of them knows.
case "$ENGINE" in
elasticsearch)
  ENGINE_NAME=Elasticsearch VERSION="$ES_VERSION"
  ARTIFACT="org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip"
  ENV_PREFIX=ES
  ENGINE_SETTINGS=(-E xpack.security.enabled=false -E xpack.ml.enabled=false)
  ;;
opensearch)
  ENGINE_NAME=OpenSearch VERSION="$OPENSEARCH_VERSION"
  ARTIFACT="org.opensearch.distribution.integ-test-zip:opensearch:$OPENSEARCH_VERSION:zip"
  ENV_PREFIX=OPENSEARCH
  # The integ-test zip has no security plugin: plain HTTP without authentication, like the Elasticsearch one.
  ENGINE_SETTINGS=()
  ;;
*)
  echo "search-server: error: SEARCH_ENGINE must be elasticsearch or opensearch, not '$ENGINE'" >&2
  exit 2
  ;;
esac
STATE_DIR="${SEARCH_STATE_DIR:-${TMPDIR:-/tmp}/caldera-sidecar-search}"
SEARCH_USER="${SEARCH_USER:-sidecar-search}"
HEAP="${SEARCH_HEAP:-512m}"
START_TIMEOUT="${SEARCH_START_TIMEOUT:-120}"
STOP_TIMEOUT=30
CLUSTER_NAME=caldera-sidecar-test

if [ "$(id -u)" -eq 0 ]; then
  IS_ROOT=1
  CACHE_DIR="${CALDERA_SIDECAR_CACHE:-/var/cache/caldera-sidecar}"
else
  IS_ROOT=0
  CACHE_DIR="${CALDERA_SIDECAR_CACHE:-${HOME:?}/.cache/caldera-sidecar}"
fi
ES_HOME="$CACHE_DIR/$ENGINE-$VERSION"
ES_BIN="$ES_HOME/bin/$ENGINE"

log() { echo "search-server: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# The number (pid, port) in a file, or nothing.
read_number() { if [ -s "$1" ]; then tr -dc '0-9' <"$1"; fi; }

# True when the pid is a live (not zombie) search engine process; guards against signalling a recycled pid.
is_es() {
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  if [ -r "/proc/$1/cmdline" ]; then
    tr '\0' ' ' <"/proc/$1/cmdline" | grep -Eq 'elasticsearch|opensearch'
  else
    ps -o args= -p "$1" 2>/dev/null | grep -Eq 'elasticsearch|opensearch'
  fi
}

healthy() { curl -fsS -m 5 "$1/_cluster/health?wait_for_status=yellow&timeout=2s" >/dev/null 2>&1; }

# Serialize start/stop/pause/resume on one state dir. The fd is closed for Elasticsearch itself (see launch).
lock_state() {
  mkdir -p "$STATE_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE_DIR/.lock"
    flock 9
  fi
}

java_major() { "$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}'; }

find_java_home() {
  local cand java v candidates=("${ES_JAVA_HOME:-}" "${JAVA_HOME:-}")
  java="$(command -v java 2>/dev/null || true)"
  [ -n "$java" ] && candidates+=("$(dirname "$(dirname "$(readlink -f "$java")")")")
  candidates+=(/usr/lib/jvm/*)
  for cand in "${candidates[@]}"; do
    if [ -z "$cand" ] || [ ! -x "$cand/bin/java" ]; then continue; fi
    v="$(java_major "$cand/bin/java")"
    case "$v" in '' | 1.*) continue ;; esac
    if [ "${v%%.*}" -ge 17 ]; then
      echo "$cand"
      return 0
    fi
  done
  return 1
}

# Prints "HTTP_PORT TRANSPORT_PORT": $1 as the HTTP port when given and free, otherwise two free ports.
pick_ports() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - "${1:-0}" <<'PY'
import socket, sys
def bind(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Elasticsearch does: TIME_WAIT is fine
    s.bind(("127.0.0.1", port))
    return s
try:
    http = bind(int(sys.argv[1]))
except OSError:
    http = bind(0)
transport = bind(0)  # both held open at once, so they differ
print(http.getsockname()[1], transport.getsockname()[1])
PY
  else
    # No python3: probe random ports for a listener (good enough on a test machine).
    local p ports=() want="${1:-}"
    while [ "${#ports[@]}" -lt 2 ]; do
      if [ -n "$want" ]; then p="$want" want=""; else p=$((20000 + RANDOM % 40000)); fi
      [ "${ports[0]:-}" = "$p" ] && continue
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || ports+=("$p")
    done
    echo "${ports[0]} ${ports[1]}"
  fi
}

# Download and unpack the distribution once (the zip stays in Maven's ~/.m2 as download cache).
ensure_distribution() {
  [ -x "$ES_BIN" ] && return 0
  mkdir -p "$CACHE_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 8>"$CACHE_DIR/.lock"
    flock 8
    [ -x "$ES_BIN" ] && return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn (Maven) is needed to download $ENGINE_NAME; scripts/test.sh installs it"
  command -v unzip >/dev/null 2>&1 || die "unzip is needed; scripts/test.sh installs it"
  local work
  work="$(mktemp -d "$CACHE_DIR/.download.XXXXXX")"
  log "downloading $ENGINE_NAME $VERSION (integ-test-zip) with Maven"
  local out
  if ! out="$(mvn -q -B dependency:copy "-Dartifact=$ARTIFACT" "-DoutputDirectory=$work" 2>&1)"; then
    printf '%s\n' "$out" >&2
    rm -rf "$work"
    die "Maven could not fetch $ARTIFACT"
  fi
  log "unpacking into $ES_HOME"
  unzip -q "$work"/"$ENGINE"-*.zip -d "$work/unpacked" || {
    rm -rf "$work"
    die "unzip failed"
  }
  [ -x "$work/unpacked/$ENGINE-$VERSION/bin/$ENGINE" ] || {
    rm -rf "$work"
    die "unexpected zip layout"
  }
  chmod -R a+rX "$work/unpacked/$ENGINE-$VERSION"
  mv "$work/unpacked/$ENGINE-$VERSION" "$ES_HOME"
  rm -rf "$work"
}

# As root: the system user Elasticsearch runs as (created once). Prints "UID GID".
service_ids() {
  if ! id -u "$SEARCH_USER" >/dev/null 2>&1; then
    log "creating system user $SEARCH_USER"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$SEARCH_USER" >&2
  fi
  echo "$(id -u "$SEARCH_USER") $(id -g "$SEARCH_USER")"
}

es_log() { echo "$STATE_DIR/logs/$CLUSTER_NAME.log"; }

show_log_tail() {
  local f
  f="$(es_log)"
  [ -s "$f" ] || f="$STATE_DIR/console.log"
  if [ -s "$f" ]; then
    log "last 50 lines of $f:"
    tail -n 50 "$f" >&2
  fi
}

print_url() {
  local url
  url="$(cat "$STATE_DIR/url")"
  echo "SEARCH_URL=$url"
}

cmd_start() {
  lock_state
  local pid url
  pid="$(read_number "$STATE_DIR/pid")"
  if is_es "$pid" && [ -s "$STATE_DIR/url" ]; then
    url="$(cat "$STATE_DIR/url")"
    if healthy "$url"; then
      log "already running (pid $pid) at $url"
      print_url
      return 0
    fi
    log "the running server (pid $pid) does not answer; restarting it"
  fi
  stop_server

  ensure_distribution
  local java_home
  java_home="$(find_java_home)" || die "no JDK 17+ found (set ES_JAVA_HOME); scripts/test.sh installs one"

  local ports http_port transport_port
  ports="$(pick_ports "${SEARCH_PORT:-$(read_number "$STATE_DIR/port")}")"
  http_port="${ports% *}"
  transport_port="${ports#* }"
  if [ -n "${SEARCH_PORT:-}" ] && [ "$http_port" != "$SEARCH_PORT" ]; then
    die "SEARCH_PORT=$SEARCH_PORT is in use"
  fi
  url="http://127.0.0.1:$http_port"

  # Fresh data, logs, tmp and a private copy of the config (ES writes its keystore there), so the cached
  # distribution stays read-only and can serve several state dirs at once.
  rm -rf "${STATE_DIR:?}/data" "$STATE_DIR/logs" "$STATE_DIR/tmp" "$STATE_DIR/config" "$STATE_DIR/es.pid"
  mkdir -p "$STATE_DIR/data" "$STATE_DIR/logs" "$STATE_DIR/tmp"
  cp -R "$ES_HOME/config" "$STATE_DIR/config"
  if [ "$ENGINE" = opensearch ]; then
    # OpenSearch's launcher runs from its home (root's cache, read-only for the service user): point the JVM's
    # relative log and dump paths into the state dir.
    sed -i -e "s#file=logs/gc.log#file=$STATE_DIR/logs/gc.log#" -e "s#ErrorFile=logs/#ErrorFile=$STATE_DIR/logs/#" \
      -e "s#HeapDumpPath=data#HeapDumpPath=$STATE_DIR/data#" "$STATE_DIR/config/jvm.options"
  fi
  echo "$http_port" >"$STATE_DIR/port"

  local as_user=()
  if [ "$IS_ROOT" -eq 1 ]; then
    local ids
    ids="$(service_ids)"
    chown "${ids% *}:${ids#* }" "$STATE_DIR" # ES writes es.pid here
    chown -R "${ids% *}:${ids#* }" "$STATE_DIR/data" "$STATE_DIR/logs" "$STATE_DIR/tmp" "$STATE_DIR/config"
    if command -v setpriv >/dev/null 2>&1; then
      as_user=(setpriv "--reuid=${ids% *}" "--regid=${ids#* }" --clear-groups --)
    else
      as_user=(runuser -u "$SEARCH_USER" --)
    fi
    if ! "${as_user[@]}" test -r "$ES_HOME/lib" -a -x "$ES_BIN"; then
      die "user $SEARCH_USER cannot read $ES_HOME; set CALDERA_SIDECAR_CACHE to a directory it can enter"
    fi
  fi
  local detach=()
  command -v setsid >/dev/null 2>&1 && detach=(setsid) # own session: a Ctrl-C meant for the tests does not hit it

  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  log "starting $ENGINE_NAME $VERSION on $url (java: $java_home, state: $STATE_DIR)"
  (
    cd "$STATE_DIR"
    # ES_* for Elasticsearch, OPENSEARCH_* for OpenSearch (same meanings).
    exec env HOME="$STATE_DIR" "${ENV_PREFIX}_JAVA_HOME=$java_home" "${ENV_PREFIX}_PATH_CONF=$STATE_DIR/config" \
      "${ENV_PREFIX}_TMPDIR=$STATE_DIR/tmp" "${ENV_PREFIX}_JAVA_OPTS=-Xms$HEAP -Xmx$HEAP ${ES_JAVA_OPTS:-}" \
      "${detach[@]}" "${as_user[@]}" "$ES_BIN" -p "$STATE_DIR/es.pid" \
      -E cluster.name="$CLUSTER_NAME" -E node.name=sidecar-search \
      -E network.host=127.0.0.1 -E http.port="$http_port" -E transport.port="$transport_port" \
      -E discovery.type=single-node "${ENGINE_SETTINGS[@]}" \
      -E path.data="$STATE_DIR/data" -E path.logs="$STATE_DIR/logs" \
      -E cluster.routing.allocation.disk.threshold_enabled=false \
      -E action.destructive_requires_name=false \
      "$@"
  ) </dev/null >"$STATE_DIR/console.log" 2>&1 8>&- 9>&- &
  pid=$!
  echo "$pid" >"$STATE_DIR/pid"

  local started=$SECONDS deadline=$((SECONDS + START_TIMEOUT))
  until healthy "$url"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      if kill -0 "$pid" 2>/dev/null; then
        log "$ENGINE_NAME was not yellow after ${START_TIMEOUT}s"
      else
        log "$ENGINE_NAME exited during start-up"
      fi
      show_log_tail
      stop_server
      exit 1
    fi
    sleep 1
  done
  echo "$url" >"$STATE_DIR/url"
  log "ready after $((SECONDS - started))s"
  print_url
}

# Stop whatever runs in the state dir; quiet when nothing does. Expects the state lock.
stop_server() {
  local pid es_pid p alive deadline
  pid="$(read_number "$STATE_DIR/pid")"
  es_pid="$(read_number "$STATE_DIR/es.pid")"
  alive=()
  for p in $es_pid $pid; do is_es "$p" && alive+=("$p"); done
  if [ "${#alive[@]}" -gt 0 ]; then
    log "stopping $ENGINE_NAME (pids ${alive[*]})"
    kill -TERM "${alive[@]}" 2>/dev/null || true
    kill -CONT "${alive[@]}" 2>/dev/null || true # a paused server must wake up to handle TERM
    deadline=$((SECONDS + STOP_TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
      local left=()
      for p in "${alive[@]}"; do is_es "$p" && left+=("$p"); done
      [ "${#left[@]}" -eq 0 ] && break
      sleep 0.5
    done
    for p in "${alive[@]}"; do
      if is_es "$p"; then
        log "pid $p ignored TERM for ${STOP_TIMEOUT}s; killing it"
        kill -KILL "$p" 2>/dev/null || true
      fi
    done
  fi
  rm -rf "${STATE_DIR:?}/data" "$STATE_DIR/tmp" "$STATE_DIR/config"
  rm -f "$STATE_DIR/pid" "$STATE_DIR/es.pid" "$STATE_DIR/url"
}

cmd_stop() {
  lock_state
  stop_server
}

running_url() {
  is_es "$(read_number "$STATE_DIR/pid")" && [ -s "$STATE_DIR/url" ] && cat "$STATE_DIR/url"
}

server_pid() {
  local es_pid
  es_pid="$(read_number "$STATE_DIR/es.pid")"
  is_es "$es_pid" || die "no $ENGINE_NAME server process running in $STATE_DIR"
  echo "$es_pid"
}

signal_server() {
  lock_state
  local es_pid
  es_pid="$(server_pid)"
  kill -"$1" "$es_pid"
}

cmd_status() {
  local url es_pid state
  if url="$(running_url)"; then
    es_pid="$(read_number "$STATE_DIR/es.pid")"
    state=running
    if [ -r "/proc/$es_pid/stat" ] && [ "$(awk '{print $3}' "/proc/$es_pid/stat")" = T ]; then state=paused; fi
    echo "$state $url launcher=$(read_number "$STATE_DIR/pid") server=$es_pid"
  else
    echo stopped
    return 1
  fi
}

case "${1:-}" in
start)
  shift
  cmd_start "$@"
  ;;
stop) cmd_stop ;;
url) running_url || die "not running (state dir $STATE_DIR)" ;;
status) cmd_status ;;
pause) signal_server STOP ;;
resume) signal_server CONT ;;
java-home) find_java_home ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
