#!/usr/bin/env bash
# Start/stop the four Embudo services as background processes for `make dev`.
# Logs: .run/logs/<service>.log, pids: .run/<service>.pid (both git-ignored).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUN="$ROOT/.run"
PY="$ROOT/.venv/bin/python"
SERVICES=(ingest:8001 leads:8002 sales:8003 metrics:8004)
DB_BASE="${EMBUDO_DEV_DB_BASE:-postgresql://embudo:embudo@127.0.0.1:5432}"

running() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() {
  mkdir -p "$RUN/logs"
  for entry in "${SERVICES[@]}"; do
    name="${entry%%:*}" port="${entry##*:}"
    if running "$name"; then echo "$name already running (pid $(cat "$RUN/$name.pid"))"; continue; fi
    (
      cd "$ROOT"
      export EMBUDO_ENV="${EMBUDO_ENV:-dev}"
      export EMBUDO_DATABASE_URL="${DB_BASE}/embudo_${name}"
      exec setsid "$PY" -m uvicorn --factory "services.${name}.main:build_app" \
        --host 127.0.0.1 --port "$port" --no-access-log >>"$RUN/logs/$name.log" 2>&1
    ) &
    echo $! >"$RUN/$name.pid"
  done
  for entry in "${SERVICES[@]}"; do
    name="${entry%%:*}" port="${entry##*:}"
    for _ in $(seq 1 60); do
      curl -fsS "http://127.0.0.1:$port/health/live" >/dev/null 2>&1 && break
      running "$name" || { echo "$name exited; last log lines:"; tail -20 "$RUN/logs/$name.log"; exit 1; }
      sleep 0.5
    done
    curl -fsS "http://127.0.0.1:$port/health/live" >/dev/null || { echo "$name did not come up"; exit 1; }
  done
  cat <<MSG

Embudo is running (EMBUDO_ENV=dev):
  ingest   http://127.0.0.1:8001   write key:  dev-write-key
  leads    http://127.0.0.1:8002   API token:  dev-api-token
  sales    http://127.0.0.1:8003   API token:  dev-api-token
  metrics  http://127.0.0.1:8004   API token:  dev-api-token   dashboard: http://127.0.0.1:8004/
  API docs at /docs on each; logs in .run/logs/; stop with: make stop
MSG
}

stop() {
  for entry in "${SERVICES[@]}"; do
    name="${entry%%:*}"
    if running "$name"; then
      pid="$(cat "$RUN/$name.pid")"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -KILL "$pid" 2>/dev/null || true
      echo "$name stopped"
    fi
    rm -f "$RUN/$name.pid"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) for e in "${SERVICES[@]}"; do n="${e%%:*}"; running "$n" && echo "$n running" || echo "$n stopped"; done ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
