#!/usr/bin/env bash
# The official postgres image's contract, for the settings docker-compose.yml relies on:
# on first start (PGDATA empty) initdb with POSTGRES_USER as superuser and POSTGRES_PASSWORD,
# password logins over TCP from anywhere (scram-sha-256), POSTGRES_DB created, and
# /docker-entrypoint-initdb.d/*.sql and *.sh run once; then the server on port 5432.
set -euo pipefail

if [ "$(id -u)" -eq 0 ]; then
  # A fresh volume may be owned by root: hand it to postgres, then drop privileges.
  install -d -o postgres -g postgres -m 700 "$PGDATA"
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres: POSTGRES_PASSWORD must be set (a superuser without a password cannot log in over TCP)" >&2
    exit 1
  fi
  echo "postgres: initialising $PGDATA"
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 ${POSTGRES_INITDB_ARGS:-} >/dev/null
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"

  # A private socket and no TCP while initialising: neither the healthcheck nor the
  # services see a server that is not ready yet.
  init_socket="$(mktemp -d)"
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$init_socket" start >/dev/null
  run_psql() { psql -X -q -v ON_ERROR_STOP=1 -h "$init_socket" -U "$POSTGRES_USER" --no-password "$@"; }
  if [ "$POSTGRES_DB" != postgres ]; then run_psql -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""; fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sql) echo "postgres: running $f"; run_psql -d "$POSTGRES_DB" -f "$f" ;;
      *.sh)  echo "postgres: running $f"; PGHOST="$init_socket" . "$f" ;;
      *)     if [ -e "$f" ]; then echo "postgres: ignoring $f"; fi ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  rmdir "$init_socket"
  echo "postgres: initialised"
fi

exec "$@"
