#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers for the tests, and prints the
# line to export:  eval "$(scripts/postgres.sh)"
#
# 1. If SPES_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test)
#    answers (pg_isready), it is used; its database is created if missing.
# 2. Otherwise a throwaway cluster is started with the installed binaries
#    (initdb, pg_ctl: /usr/lib/postgresql/*/bin or pg_config --bindir) in
#    $SPES_PG_DIR (default ${TMPDIR:-/tmp}/spes-pg), on a free loopback port,
#    trust authentication, fsync off. Running it again reuses that cluster.
#    As root, the cluster runs as the `postgres` user (initdb refuses root).
# Needs: pg_isready and psql (postgresql-client), and for 2 the server
# binaries (postgresql); both are installed with scripts/deps.sh (apt) when
# missing. Works without a terminal (CI=true, no stdin).
# `scripts/postgres.sh stop` stops the throwaway cluster.
set -euo pipefail

default_url=postgres://postgres@127.0.0.1:5432/test
url=${SPES_TEST_POSTGRES_URL:-$default_url}
dir=${SPES_PG_DIR:-${TMPDIR:-/tmp}/spes-pg}

say() { echo "postgres.sh: $*" >&2; }
die() { say "$*"; exit 1; }

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$d" ] && command -v pg_config >/dev/null; then d=$(pg_config --bindir); fi
  [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] || return 1
  echo "$d"
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root and there is no 'postgres' user to own a throwaway cluster"
    runuser -u postgres -- "$@" </dev/null
  else
    "$@" </dev/null
  fi
}

# The database name in a URL (the path, without a query).
db_of() { local p=${1#*://}; p=${p#*/}; p=${p%%\?*}; echo "${p:-postgres}"; }
base_of() { local u=${1%%\?*}; echo "${u%/*}"; }

ensure_db() {
  local u=$1 db; db=$(db_of "$u")
  if ! psql "$(base_of "$u")/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" </dev/null | grep -q 1; then
    psql "$(base_of "$u")/postgres" -qc "CREATE DATABASE \"$db\"" </dev/null >/dev/null
  fi
}

here=$(cd "$(dirname "$0")" && pwd)
command -v pg_isready >/dev/null || bash "$here/deps.sh" postgresql-client >&2 \
  || die "pg_isready not found: install the PostgreSQL client (apt-get install postgresql-client)"
command -v pg_isready >/dev/null || die "pg_isready not found: install the PostgreSQL client (apt-get install postgresql-client)"

if [ "${1:-}" = stop ]; then
  b=$(bindir) || die "no pg_ctl found"
  [ -f "$dir/data/postmaster.pid" ] && as_owner "$b/pg_ctl" -D "$dir/data" -m fast stop >&2
  exit 0
fi

if pg_isready -q -d "$url" -t 3 </dev/null; then
  ensure_db "$url"
  echo "export SPES_TEST_POSTGRES_URL='$url'"
  exit 0
fi

[ -z "${SPES_TEST_POSTGRES_URL:-}" ] || say "$SPES_TEST_POSTGRES_URL does not answer; starting a throwaway cluster instead"
if ! bindir >/dev/null; then
  say "no server answers at $url and no server binaries are installed: installing postgresql"
  bash "$here/deps.sh" postgresql >&2 || true
fi
b=$(bindir) || die "no server answers at $url and no PostgreSQL server binaries (initdb, pg_ctl) were found; install postgresql or set SPES_TEST_POSTGRES_URL"

mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
if [ -f "$dir/port" ]; then port=$(cat "$dir/port"); else
  port=54329
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
fi
local_url="postgres://postgres@127.0.0.1:$port/test"
if ! pg_isready -q -h 127.0.0.1 -p "$port" -t 1 </dev/null; then
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    say "initdb in $dir/data"
    as_owner "$b/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
  fi
  echo "$port" > "$dir/port"
  say "starting PostgreSQL on 127.0.0.1:$port (log: $dir/log)"
  as_owner "$b/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null \
    || die "pg_ctl start failed; see $dir/log"
fi
ensure_db "$local_url"
echo "export SPES_TEST_POSTGRES_URL='$local_url'"
