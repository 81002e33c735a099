#!/usr/bin/env bash
# Local PostgreSQL for `make dev`, `make test` and CI: the machine's Debian cluster
# (<newest version> main, port 5432), plus the embudo role and the services' databases.
#
#   postgres.sh start    install PostgreSQL via apt if missing, start the cluster, wait until it
#                        accepts connections, create role/databases if missing, check TCP login
#   postgres.sh stop     stop the cluster (no-op when down); data is kept
#   postgres.sh status   exit 0 if it accepts connections on 127.0.0.1:5432, 3 if not
#   postgres.sh reset    drop every database owned by embudo (incl. test leftovers), recreate the three
#
# DSN: postgresql://embudo:embudo@127.0.0.1:5432/embudo_leads  (also embudo_sales, embudo_metrics)
# Env: POSTGRES_PORT (5432), POSTGRES_CLUSTER (main): another Debian cluster, created if missing.
set -euo pipefail

HOST=127.0.0.1
PORT="${POSTGRES_PORT:-5432}"
CLUSTER="${POSTGRES_CLUSTER:-main}"   # Debian cluster name (pg_lsclusters)
ROLE=embudo
PASSWORD=embudo
DATABASES=(embudo_leads embudo_sales embudo_metrics)
START_TIMEOUT=30

say() { echo "postgres: $*"; }
die() { echo "postgres: ERROR: $*" >&2; exit 1; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# Superuser work goes through the local socket as the postgres OS user (peer auth).
# cd / because psql complains when it cannot read the caller's cwd.
as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@")
  else (cd / && sudo -u postgres "$@"); fi
}
psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres "$@"; }

ensure_installed() {
  compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null && return 0
  say "PostgreSQL server not found; installing it from apt"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
}

# Newest installed server version, e.g. 15 on Debian 12.
pg_version() {
  printf '%s\n' /usr/lib/postgresql/*/bin/postgres | awk -F/ '{print $5}' | sort -V | tail -n 1
}

# "online" / "down" / "" (no such cluster), from Debian's cluster tooling.
cluster_state() { { pg_lsclusters -h "$1" "$CLUSTER" 2>/dev/null || true; } | awk '{print $4}'; }

ready() { pg_isready -q -h "$HOST" -p "$PORT" -t 2; }

ensure_running() {
  local ver="$1" state
  state="$(cluster_state "$ver")"
  if [ -z "$state" ]; then
    # The package normally creates it; a purged/partial install may not have.
    say "creating cluster $ver/$CLUSTER on port $PORT"
    as_root pg_createcluster -p "$PORT" "$ver" "$CLUSTER" >/dev/null
    state=down
  fi
  if [ "$state" != online ]; then
    say "starting cluster $ver/$CLUSTER"
    as_root pg_ctlcluster "$ver" "$CLUSTER" start
  fi
  local t0=$SECONDS
  until ready; do
    (( SECONDS - t0 < START_TIMEOUT )) || {
      tail -n 20 "/var/log/postgresql/postgresql-$ver-$CLUSTER.log" >&2 2>/dev/null || true
      die "not accepting connections on $HOST:$PORT after ${START_TIMEOUT}s"
    }
    sleep 0.5
  done
}

# Idempotent: the role's password/flags are (re)set every time, databases only created if absent.
ensure_role_and_databases() {
  local sql db
  sql="SET client_min_messages = warning;
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  ELSE
    ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  END IF;
END \$\$;
-- DROP DATABASE ... WITH (FORCE) must be able to end an autovacuum worker in the database,
-- which Postgres 15 checks as signalling another role's backend.
GRANT pg_signal_backend TO $ROLE;"
  for db in "${DATABASES[@]}"; do
    sql+="
SELECT 'CREATE DATABASE $db OWNER $ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db') \\gexec"
  done
  psql_admin <<<"$sql"
}

dsn() { echo "postgresql://$ROLE:$PASSWORD@$HOST:$PORT/$1"; }

tcp_login_ok() { psql -X -q -At "$(dsn "${DATABASES[0]}")" -c 'select 1' >/dev/null 2>&1; }

# The services log in with a password over TCP. Debian's default pg_hba.conf allows that
# (host all all 127.0.0.1/32 scram-sha-256); if a local edit broke it, put a rule for our
# role first in the file and reload, rather than failing every test later.
ensure_tcp_login() {
  tcp_login_ok && return 0
  local hba
  hba="$(psql_admin -At -c 'SHOW hba_file')"
  local rule="host all $ROLE 127.0.0.1/32 scram-sha-256"
  if ! grep -qxF "$rule" "$hba"; then
    say "adding '$rule' as the first rule of $hba"
    as_root sed -i "1i $rule" "$hba"
    psql_admin -c 'SELECT pg_reload_conf()' >/dev/null
    sleep 0.5
  fi
  tcp_login_ok || { psql -X "$(dsn "${DATABASES[0]}")" -c 'select 1' >&2 || true
                    die "password login over TCP fails: $(dsn "${DATABASES[0]}")"; }
}

cmd_start() {
  ensure_installed
  local ver; ver="$(pg_version)"
  if ready; then say "already running ($ver/$CLUSTER, $HOST:$PORT)"; else ensure_running "$ver"; fi
  ensure_role_and_databases
  ensure_tcp_login
  say "ready: $(dsn "${DATABASES[0]}") (also ${DATABASES[*]:1})"
}

cmd_stop() {
  if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then say "not installed"; return 0; fi
  local ver; ver="$(pg_version)"
  if [ "$(cluster_state "$ver")" = online ]; then
    as_root pg_ctlcluster "$ver" "$CLUSTER" stop -m fast
    say "stopped $ver/$CLUSTER"
  else
    say "not running"
  fi
}

cmd_status() {
  if ready; then say "running ($HOST:$PORT)"; else say "not running"; return 3; fi
}

cmd_reset() {
  cmd_start >/dev/null
  local db
  for db in $(psql_admin -At -c "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = '$ROLE'"); do
    psql_admin -c "DROP DATABASE \"$db\" WITH (FORCE)"
    say "dropped $db"
  done
  ensure_role_and_databases
  say "reset done: ${DATABASES[*]} are empty"
}

case "${1:-}" in
  start)  cmd_start ;;
  stop)   cmd_stop ;;
  status) cmd_status ;;
  reset)  cmd_reset ;;
  *)      echo "usage: $0 start | stop | status | reset" >&2; exit 2 ;;
esac
