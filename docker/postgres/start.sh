#!/usr/bin/env bash
# First start on an empty PGDATA: initdb with POSTGRES_USER / POSTGRES_PASSWORD (password auth over TCP),
# run /docker-entrypoint-initdb.d/*.sql; then run the command (postgres) listening on every interface.
set -euo pipefail
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=postgres}"
if [[ ! -s $PGDATA/PG_VERSION ]]; then
    [[ -n ${POSTGRES_PASSWORD:-} ]] || { echo "postgres-start: set POSTGRES_PASSWORD" >&2; exit 78; }
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    # a server on the Unix socket only while the init scripts run (as the upstream image does)
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql=(psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname postgres)
    [[ $POSTGRES_DB == postgres ]] || "${psql[@]}" -c "CREATE DATABASE \"$POSTGRES_DB\""
    for f in /docker-entrypoint-initdb.d/*.sql; do
        [[ -e $f ]] || continue
        echo "postgres-start: running $f"
        "${psql[@]}" -f "$f"
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec "$@"
