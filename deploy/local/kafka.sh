#!/usr/bin/env bash
# Local Apache Kafka 4.x for `make dev`, `make test` and CI: one real KRaft node that is both
# broker and controller, run straight from Maven Central jars (no Docker, no tarball).
#
#   kafka.sh start            fetch jars if needed, format storage once, start, wait until it answers
#   kafka.sh stop [--wipe]    stop the broker; --wipe also deletes its data (topics, offsets)
#   kafka.sh reset            same as: stop --wipe
#   kafka.sh status           exit 0 if our broker is up, 3 if not
#   kafka.sh cli CLASS ARGS   run a Kafka CLI class with the same jars, e.g.
#                             kafka.sh cli org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#
# Env: KAFKA_STATE_DIR (deploy/local/.kafka), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_START_TIMEOUT (120 s),
#      KAFKA_HEAP_OPTS ("-Xms256m -Xmx1g"). Changing ports of an existing data dir needs `reset`.
#
# A cluster: KAFKA_BROKERS=3 kafka.sh start|stop|reset|status runs three KRaft nodes (each broker
# and controller, a quorum of three) on 9092/9093, 9094/9095, 9096/9097 (from KAFKA_PORT on), data in
# deploy/local/.kafka-cluster/node-N; internal topics get replication factor 3 and
# min.insync.replicas 2, as production should. Bootstrap: 127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096.
# One node of a cluster (what the loop runs, and what tests use with ports of their own):
#   KAFKA_NODE_ID, KAFKA_QUORUM_VOTERS ("1@127.0.0.1:9093,2@..."), KAFKA_CLUSTER_ID (shared by all nodes).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Everything generated lives here (git-ignored). KAFKA_STATE_DIR gives a second, private
# broker (with KAFKA_PORT/KAFKA_CONTROLLER_PORT) its own data; the jars are always shared.
STATE="${KAFKA_STATE_DIR:-$HERE/.kafka}"
LIBS="$HERE/.kafka/libs"
DATA="$STATE/data"
CONF="$STATE/server.properties"
PIDFILE="$STATE/kafka.pid"
OUTLOG="$STATE/kafka.log"            # JVM stdout/stderr: WARN+ only (INFO goes to server.log)
POM="$HERE/kafka/pom.xml"
HOST=127.0.0.1
PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
# Generous: loading thousands of test topics' partitions alone can take tens of seconds.
START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
STOP_TIMEOUT=20
read -r -a HEAP <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
BROKERS="${KAFKA_BROKERS:-1}"
NODE_ID="${KAFKA_NODE_ID:-1}"
VOTERS="${KAFKA_QUORUM_VOTERS:-}"          # empty: a single node (the default)
# Replication of Kafka's own topics (offsets, transactions): every broker of the cluster, at most 3.
if [ -n "$VOTERS" ]; then
  VOTER_COUNT="$(tr ',' '\n' <<<"$VOTERS" | grep -c .)"
  REPLICATION=$(( VOTER_COUNT < 3 ? VOTER_COUNT : 3 ))
else
  REPLICATION=1
fi
MIN_ISR=$(( REPLICATION > 1 ? 2 : 1 ))

say() { echo "kafka: $*"; }
die() { echo "kafka: ERROR: $*" >&2; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# A TCP connect is enough for the fast "already running?" check (a JVM tool costs ~2 s).
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# PID of the broker this script started, if it is still alive. The cmdline check guards
# against a stale pid file whose number was reused by another process.
our_pid() {
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  echo "$pid"
}

ensure_tools() {
  command -v java >/dev/null && command -v mvn >/dev/null && return 0
  say "installing Java 17 and Maven from apt"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless maven
}

# Jars come from kafka/pom.xml. A stamp of the pom's hash makes a version bump refetch
# instead of mixing old and new jars; fetching into a temp dir means an interrupted
# download never leaves a half-filled libs/ that looks complete.
ensure_libs() {
  local stamp; stamp="$(sha256sum "$POM" | cut -d' ' -f1)"
  if [ -f "$LIBS/.pom.sha256" ] && [ "$(cat "$LIBS/.pom.sha256")" = "$stamp" ] \
     && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
    return 0
  fi
  ensure_tools
  say "fetching Kafka jars with Maven into $LIBS (first run only)"
  local t0=$SECONDS
  mkdir -p "$STATE"
  rm -rf "$LIBS.tmp"
  # Output goes to a file and is shown only on failure (Debian's Maven 3.8 prints stray
  # ANSI reset codes even with -q).
  mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$LIBS.tmp" \
      >"$STATE/maven.log" 2>&1 \
    || { cat "$STATE/maven.log" >&2; die "maven could not fetch the Kafka jars (log: $STATE/maven.log)"; }
  echo "$stamp" >"$LIBS.tmp/.pom.sha256"
  rm -rf "$LIBS" && mv "$LIBS.tmp" "$LIBS"
  say "jars ready ($(find "$LIBS" -name '*.jar' | wc -l) jars, $((SECONDS - t0)) s)"
}

# Run a Kafka CLI class with quiet (WARN, stderr) logging.
kcli() {
  java -Xms64m -Xmx512m -XX:TieredStopAtLevel=1 -cp "$LIBS/*" -Dlog4j2.shutdownHookEnabled=false \
    -Dlog4j2.configurationFile="$HERE/kafka/tools-log4j2.xml" "$@"
}

write_config() {
  local quorum="controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT"
  [ -n "$VOTERS" ] && quorum="controller.quorum.voters=$VOTERS"
  cat >"$CONF" <<PROPS
# Generated by deploy/local/kafka.sh on each start; edit the script, not this file.
# A KRaft node: broker and controller in one JVM (alone, or one of a static quorum).
process.roles=broker,controller
node.id=$NODE_ID
$quorum
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA

# Topics are created explicitly by the services/tests, never by a typo.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$REPLICATION
min.insync.replicas=$MIN_ISR

# Kafka's own topics: on every broker of a small cluster (one broker: replication factor 1).
offsets.topic.replication.factor=$REPLICATION
transaction.state.log.replication.factor=$REPLICATION
transaction.state.log.min.isr=$MIN_ISR
share.coordinator.state.topic.replication.factor=$REPLICATION
share.coordinator.state.topic.min.isr=$MIN_ISR

# Fast tests: fewer internal partitions make the first group join / first transaction
# quick, no delay before the first rebalance, and short session timeouts are allowed.
offsets.topic.num.partitions=10
transaction.state.log.num.partitions=10
share.coordinator.state.topic.num.partitions=10
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000

# A 2-core dev/CI box does not need the default thread counts.
num.network.threads=2
num.io.threads=4
PROPS
}

# Format the log dir once; meta.properties (which holds the cluster id) marks it done.
format_storage() {
  [ -f "$DATA/meta.properties" ] && return 0
  local cid
  mkdir -p "$DATA"
  if [ -n "$VOTERS" ]; then  # every node of the quorum is formatted with the same cluster id
    cid="${KAFKA_CLUSTER_ID:?KAFKA_CLUSTER_ID is needed with KAFKA_QUORUM_VOTERS}"
    say "formatting storage in $DATA (cluster id $cid, node $NODE_ID)"
    kcli kafka.tools.StorageTool format -t "$cid" -c "$CONF" >/dev/null
    return 0
  fi
  cid="$(kcli kafka.tools.StorageTool random-uuid)"
  say "formatting storage in $DATA (cluster id $cid)"
  kcli kafka.tools.StorageTool format --standalone -t "$cid" -c "$CONF" >/dev/null
}

# A real Kafka request. The port alone is not proof: the listener socket is bound
# before the broker starts serving requests.
answers() {
  timeout 30 java -Xms64m -Xmx256m -XX:TieredStopAtLevel=1 -cp "$LIBS/*" \
    -Dlog4j2.configurationFile="$HERE/kafka/tools-log4j2.xml" \
    org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$HOST:$PORT" 2>/dev/null \
    | grep -q '(id: '
}

show_log_tail() {
  echo "---- last lines of $OUTLOG ----" >&2; tail -n 30 "$OUTLOG" >&2 2>/dev/null || true
  echo "---- last lines of $STATE/server.log ----" >&2; tail -n 30 "$STATE/server.log" >&2 2>/dev/null || true
}

wait_ready() {
  local pid="$1" t0=$SECONDS
  while (( SECONDS - t0 < START_TIMEOUT )); do
    kill -0 "$pid" 2>/dev/null || { show_log_tail; die "broker exited during startup"; }
    if port_open "$PORT" && answers; then
      say "up on $HOST:$PORT (pid $pid, ready after $((SECONDS - t0)) s)"
      return 0
    fi
    sleep 1
  done
  show_log_tail
  die "broker did not answer on $HOST:$PORT within ${START_TIMEOUT}s (still running as pid $pid; '$0 stop' to kill it)"
}

cmd_start() {
  local pid
  if pid="$(our_pid)"; then
    if port_open "$PORT"; then say "already running (pid $pid, $HOST:$PORT)"; return 0; fi
    say "pid $pid is still starting; waiting"   # e.g. two `make` targets racing
    ensure_libs; wait_ready "$pid"; return 0
  fi
  rm -f "$PIDFILE"
  mkdir -p "$STATE"
  ensure_libs
  if port_open "$PORT"; then
    # Something else owns the port (e.g. a broker started from another checkout).
    answers || die "$HOST:$PORT is taken by a process that is not a Kafka broker"
    say "WARNING: a Kafka broker not started by this script already answers on $HOST:$PORT; using it"
    return 0
  fi
  port_open "$CONTROLLER_PORT" && die "controller port $HOST:$CONTROLLER_PORT is already in use"

  write_config
  format_storage
  say "starting broker on $HOST:$PORT (logs: $OUTLOG, $STATE/server.log)"
  # setsid: own session, so the broker outlives this shell and any terminal hangup. Every
  # step execs into the next, so no shell lingers; the inner bash writes its own pid and
  # then becomes java, so the pid file is exact. The broker must not keep the caller's
  # stdout (a `make | tee` would never end), the lock fd 9 (later starts would block) or
  # any other inherited descriptor, so all fds above 2 are closed first.
  (
    cd "$STATE"
    for fd in /proc/self/fd/*; do fd="${fd##*/}"; (( fd > 2 )) && eval "exec $fd>&-"; done
    # shellcheck disable=SC2016  # $$ and $@ are for the inner bash
    exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
      java "${HEAP[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true -Dkafka.logs.dir="$STATE" \
      -Dlog4j2.configurationFile="$HERE/kafka/log4j2.xml" \
      -cp "$LIBS/*" kafka.Kafka "$CONF" >"$OUTLOG" 2>&1 </dev/null 9>&-
  ) &
  for _ in $(seq 50); do [ -s "$PIDFILE" ] && break; sleep 0.1; done
  [ -s "$PIDFILE" ] || die "could not launch java (no pid file)"
  wait_ready "$(cat "$PIDFILE")"
}

cmd_stop() {
  local pid wipe=0
  [ "${1:-}" = "--wipe" ] && wipe=1
  if pid="$(our_pid)"; then
    say "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true   # controlled shutdown, keeps the logs consistent
    for _ in $(seq $((STOP_TIMEOUT * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "still alive after ${STOP_TIMEOUT}s; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    say "stopped"
  else
    say "not running"
  fi
  rm -f "$PIDFILE"
  if (( wipe )); then
    rm -rf "$DATA" "$CONF" "$STATE"/server.log*
    say "data wiped ($DATA)"
  fi
}

cmd_status() {
  local pid
  if pid="$(our_pid)" && port_open "$PORT"; then
    say "running (pid $pid, $HOST:$PORT, data $DATA)"
  elif pid="$(our_pid)"; then
    say "starting or hung (pid $pid, $HOST:$PORT not accepting)"; return 3
  else
    say "not running"; return 3
  fi
}

# start/stop hold a lock so parallel callers (make -j, two terminals) cannot both
# format the storage or launch two brokers; the second one then sees "already running".
lock() { mkdir -p "$STATE"; exec 9>"$STATE/.lock"; flock 9; }

# KAFKA_BROKERS > 1: run this script once per node, all at once (a node only answers once a
# majority of the quorum is up), each with its own ports and state dir.
cluster() {
  local cmd="$1" n pids=() rc=0 voters="" cluster_dir="${KAFKA_STATE_DIR:-$HERE/.kafka-cluster}"
  for n in $(seq "$BROKERS"); do voters+="${voters:+,}$n@$HOST:$((PORT + 1 + 2 * (n - 1)))"; done
  mkdir -p "$cluster_dir"
  [ -s "$cluster_dir/cluster-id" ] || { ensure_libs; kcli kafka.tools.StorageTool random-uuid >"$cluster_dir/cluster-id"; }
  for n in $(seq "$BROKERS"); do
    KAFKA_BROKERS=1 KAFKA_NODE_ID="$n" KAFKA_QUORUM_VOTERS="$voters" KAFKA_CLUSTER_ID="$(cat "$cluster_dir/cluster-id")" \
      KAFKA_STATE_DIR="$cluster_dir/node-$n" KAFKA_PORT=$((PORT + 2 * (n - 1))) KAFKA_CONTROLLER_PORT=$((PORT + 1 + 2 * (n - 1))) \
      "$0" "$cmd" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
  [ "$cmd" = reset ] && rm -f "$cluster_dir/cluster-id"
  return "$rc"
}
if (( BROKERS > 1 )) && [[ "${1:-}" =~ ^(start|stop|reset|status)$ ]]; then
  ensure_libs
  cluster "$1"
  exit $?
fi

case "${1:-}" in
  start)  lock; cmd_start ;;
  stop)   shift; lock; cmd_stop "${1:-}" ;;
  reset)  lock; cmd_stop --wipe ;;
  status) cmd_status ;;
  cli)    shift; [ $# -ge 1 ] || die "usage: $0 cli CLASS [ARGS...]"; ensure_libs; kcli "$@" ;;
  *)      echo "usage: $0 start | stop [--wipe] | reset | status | cli CLASS [ARGS...]" >&2; exit 2 ;;
esac
