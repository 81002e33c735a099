#!/usr/bin/env bash
# Docker for `make test` (tests/e2e/test_docker_compose.py) on a machine that has no image registry:
# Debian's engine, the compose v2 CLI built from its Go module, and local stand-ins for the
# official images that docker-compose.yml uses (docs/operations.md, "docker compose").
#
#   docker.sh start           install Debian's docker.io if missing, start dockerd unless it answers
#   docker.sh stop            stop the dockerd this script started
#   docker.sh status          exit 0 if the engine answers, 3 if not
#   docker.sh compose ARGS    the compose v2 CLI (built once, cached), e.g. docker.sh compose up --build
#   docker.sh standins        build the stand-in images unless cached; prints the compose
#                             variables that select them (EMBUDO_PYTHON_IMAGE=…, KAFKA_IMAGE=…, POSTGRES_IMAGE=…)
#   docker.sh prepare         all of the above that the test needs: start, the compose CLI, standins
#
# Everything is cached outside the clone, so a fresh clone on the same machine reuses it:
# the compose binary in $EMBUDO_DOCKER_CACHE (/var/cache/embudo as root, else
# ~/.cache/embudo), the images in the engine, labelled with a hash of what they were built
# from. Env: EMBUDO_DOCKER_CACHE, COMPOSE_VERSION (v5.6.0), DOCKER_START_TIMEOUT (60 s).
set -euo pipefail
export LC_ALL=C   # stable sort order for the content hashes

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
if [ "$(id -u)" -eq 0 ]; then DEFAULT_CACHE=/var/cache/embudo; else DEFAULT_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/embudo"; fi
CACHE="${EMBUDO_DOCKER_CACHE:-$DEFAULT_CACHE}"
# v5.6.0 is the newest release that builds with this machine's Go (newer ones need a newer toolchain).
COMPOSE_VERSION="${COMPOSE_VERSION:-v5.6.0}"
COMPOSE_MODULE=github.com/docker/compose/v5
COMPOSE_BIN="$CACHE/bin/docker-compose-$COMPOSE_VERSION"
START_TIMEOUT="${DOCKER_START_TIMEOUT:-60}"
DOCKERD_LOG="$CACHE/dockerd.log"
DOCKERD_PIDFILE="$CACHE/dockerd.pid"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
LABEL=org.embudo.standin.hash
BASE_IMAGE="embudo-standin/debian:$SUITE"
# Never the official names: tests/conftest.py switches to testcontainers when those exist locally.
PYTHON_IMAGE=embudo-standin/python:3.11
POSTGRES_IMAGE=embudo-standin/postgres:15
KAFKA_LIBS="$ROOT/deploy/local/.kafka/libs"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/deploy/local/kafka/pom.xml")"
KAFKA_IMAGE="embudo-standin/kafka:$KAFKA_VERSION"

say() { echo "docker: $*" >&2; }
die() { echo "docker: ERROR: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

engine_answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} from apt"
  as_root apt-get update -q >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
}

cmd_start() {
  ensure_packages
  if engine_answers; then say "engine answers ($(docker version --format '{{.Server.Version}}'))"; return 0; fi
  mkdir -p "$CACHE"
  say "starting dockerd (log: $DOCKERD_LOG)"
  # Own session and no inherited descriptors, so the engine outlives this shell and a
  # `make | tee` still ends; dockerd starts its own containerd.
  local sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  (
    for fd in /proc/self/fd/*; do fd="${fd##*/}"; (( fd > 2 )) && eval "exec $fd>&-"; done
    # shellcheck disable=SC2016  # $$ and $@ are for the inner bash
    exec "${sudo[@]}" setsid bash -c 'echo $$ >"$0"; exec "$@"' "$DOCKERD_PIDFILE" dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null
  ) &
  local t0=$SECONDS
  until engine_answers; do
    if (( SECONDS - t0 > START_TIMEOUT )); then
      tail -n 20 "$DOCKERD_LOG" >&2 || true
      die "the engine did not answer within ${START_TIMEOUT}s (log: $DOCKERD_LOG)"
    fi
    sleep 0.5
  done
  say "engine up after $((SECONDS - t0)) s"
}

cmd_stop() {
  local pid
  if [ -s "$DOCKERD_PIDFILE" ] && pid="$(cat "$DOCKERD_PIDFILE")" && [ -d "/proc/$pid" ] \
     && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q dockerd; then
    say "stopping dockerd (pid $pid)"
    as_root kill -TERM "$pid"
    for _ in $(seq 300); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    rm -f "$DOCKERD_PIDFILE"
  else
    say "no dockerd started by this script is running"
  fi
}

# The compose v2 CLI (Debian's docker-compose is v1). `go install pkg@version` refuses the
# module (its go.mod has exclude directives), so build inside the downloaded module instead.
ensure_compose() {
  [ -x "$COMPOSE_BIN" ] && return 0
  local go dir t0=$SECONDS
  go="$(command -v go || echo /usr/local/go/bin/go)"
  [ -x "$go" ] || die "the compose CLI is built from its Go module and needs Go (>= the go line of $COMPOSE_MODULE@$COMPOSE_VERSION's go.mod)"
  say "building the compose CLI $COMPOSE_VERSION from its Go module (first run only; several minutes)"
  # This Go, not a download of another; no -mod= or other flags of the caller's.
  export GOTOOLCHAIN=local GOFLAGS=
  dir="$("$go" mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
  [ -d "$dir" ] || die "go mod download $COMPOSE_MODULE@$COMPOSE_VERSION failed"
  mkdir -p "$CACHE/bin"
  (cd "$dir" && nice "$go" build -trimpath -ldflags "-s -w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" \
    -o "$COMPOSE_BIN.tmp.$$" ./cmd) >&2 || die "building the compose CLI failed"
  mv "$COMPOSE_BIN.tmp.$$" "$COMPOSE_BIN"
  say "compose CLI ready: $COMPOSE_BIN ($((SECONDS - t0)) s)"
}

# --- stand-in images -----------------------------------------------------------------------

label_of() { docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }

# A Debian base made without any registry: debootstrap from Debian's packages, then docker import.
ensure_base() {
  local hash; hash="$(echo "debootstrap --variant=minbase $SUITE $MIRROR v1" | sha256sum | cut -c1-16)"
  [ "$(label_of "$BASE_IMAGE")" = "$hash" ] && return 0
  local t0=$SECONDS root="$CACHE/rootfs.tmp"
  say "building $BASE_IMAGE with debootstrap (first run only, ~2 min)"
  as_root rm -rf "$root"
  as_root debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  as_root rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  as_root tar -C "$root" -c . | docker import -c 'CMD ["bash"]' -c "LABEL $LABEL=$hash" - "$BASE_IMAGE" >/dev/null
  as_root rm -rf "$root"
  say "$BASE_IMAGE ready ($((SECONDS - t0)) s)"
}

# build_standin IMAGE DIR INPUTS [PATH...]: docker build of deploy/docker/DIR, with the
# PATHs copied into the context, FROM the base; skipped when an image built from the same
# base, DIR and INPUTS (a digest of the PATHs) already exists.
build_standin() {
  local image="$1" name="$2" dir="$HERE/$2" inputs="$3" hash ctx t0=$SECONDS; shift 3
  hash="$( { docker image inspect -f '{{.Id}}' "$BASE_IMAGE"; (cd "$dir" && find . -type f | sort | xargs sha256sum); \
             echo "$inputs"; } | sha256sum | cut -c1-16)"
  [ "$(label_of "$image")" = "$hash" ] && return 0
  say "building $image (first run, or its inputs changed)"
  ctx="$(mktemp -d "$CACHE/context.XXXXXX")"
  cp -a "$dir/." "$ctx/"
  [ $# -eq 0 ] || cp -a "$@" "$ctx/"
  local log="$CACHE/build-$name.log"
  DOCKER_BUILDKIT=0 docker build --build-arg "BASE=$BASE_IMAGE" --label "$LABEL=$hash" -t "$image" "$ctx" >"$log" 2>&1 \
    || { rm -rf "$ctx"; tail -n 30 "$log" >&2; die "building $image failed (log: $log)"; }
  rm -rf "$ctx"
  say "$image ready ($((SECONDS - t0)) s)"
}

cmd_standins() {
  mkdir -p "$CACHE"
  exec 8>"$CACHE/.standins.lock"; flock 8   # parallel runs build each image once
  ensure_base
  # pip inside the containers trusts what the host trusts (a proxy's CA included).
  local ca=/etc/ssl/certs/ca-certificates.crt pids=() pid failed=0
  # The broker: the same Maven jars as deploy/local (kafka.sh fetches them once).
  [ -f "$KAFKA_LIBS/.pom.sha256" ] || "$ROOT/deploy/local/kafka.sh" cli kafka.tools.StorageTool random-uuid >/dev/null
  # In parallel: mostly waiting on Debian's mirror.
  build_standin "$PYTHON_IMAGE" python "$(sha256sum <"$ca")" "$ca" & pids+=($!)
  build_standin "$POSTGRES_IMAGE" postgres "" & pids+=($!)
  build_standin "$KAFKA_IMAGE" kafka "$(cat "$KAFKA_LIBS/.pom.sha256"; ls "$KAFKA_LIBS")" "$KAFKA_LIBS" & pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  (( failed == 0 )) || die "a stand-in image did not build (see above)"
  echo "EMBUDO_PYTHON_IMAGE=$PYTHON_IMAGE"
  echo "KAFKA_IMAGE=$KAFKA_IMAGE"
  echo "POSTGRES_IMAGE=$POSTGRES_IMAGE"
}

case "${1:-}" in
  start)    cmd_start ;;
  stop)     cmd_stop ;;
  status)   if engine_answers; then say "engine answers"; else say "engine not answering"; exit 3; fi ;;
  compose)  shift; ensure_compose; exec "$COMPOSE_BIN" "$@" ;;
  standins) cmd_standins ;;
  prepare)
    t0=$SECONDS; cmd_start
    # The CLI's build is CPU-bound, the images' mostly downloads: side by side on a cold machine.
    ensure_compose & compose_pid=$!
    cmd_standins
    wait "$compose_pid" || die "no compose CLI (see above)"
    say "ready for docker compose ($((SECONDS - t0)) s)" ;;
  *)        echo "usage: $0 start | stop | status | compose ARGS... | standins | prepare" >&2; exit 2 ;;
esac
