#!/bin/bash
# A pgfailover lab node (the compose lab, and the PGFAILOVER_LAB=docker lab),
# as user postgres.
#
# ROLE=primary: on first start, initdb, the replication settings
#   (SYNCHRONOUS_STANDBY_NAMES among them, then the lines of PG_SETTINGS),
#   a replication role and one physical slot per name in STANDBY_SLOTS.
# ROLE=standby: on first start, wait for PRIMARY_HOST and clone it with
#   pg_basebackup through the slot STANDBY_NAME, streaming under that name.
# AUTH=scram-sha-256 (the default) needs POSTGRES_PASSWORD and
#   REPLICATION_PASSWORD; AUTH=trust (the lab on loopback) needs neither.
# Then run the command (postgres) as PID 1, named NODE_NAME (cluster_name).
# Any other command (a one-off pg_rewind, a shell) runs as given.
set -euo pipefail

if [ "${1:-}" != postgres ]; then
    exec "$@"
fi

: "${ROLE:?ROLE must be primary or standby}"
AUTH=${AUTH:-scram-sha-256}
case "$AUTH" in
    trust) ;;
    scram-sha-256)
        : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
        : "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"
        ;;
    *) echo "AUTH must be scram-sha-256 or trust, not '$AUTH'" >&2; exit 2 ;;
esac

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ "$ROLE" = primary ]; then
        pwfile=$(mktemp)
        password=()
        if [ "$AUTH" != trust ]; then
            printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
            password=(--pwfile="$pwfile")
        fi
        initdb -D "$PGDATA" -U postgres "${password[@]}" --auth-local=peer \
            --encoding=UTF8 --locale=C.UTF-8 \
            --auth-host="$AUTH" --data-checksums >/dev/null
        rm -f "$pwfile"
        {
            echo "host all all all $AUTH"
            echo "host replication all all $AUTH"
        } >> "$PGDATA/pg_hba.conf"
        # In postgresql.conf, not on the command line: the standbys' clones
        # and pg_rewind's single-user run read them, and ALTER SYSTEM (auto
        # mode sets wal_receiver_timeout and synchronous_standby_names) can
        # override them.
        cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
wal_level = replica
wal_log_hints = on
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
wal_keep_size = '256MB'
wal_receiver_timeout = '5s'
synchronous_standby_names = '${SYNCHRONOUS_STANDBY_NAMES:-}'
CONF
        # Later lines win: PG_SETTINGS may override any of the above.
        printf '%s\n' "${PG_SETTINGS:-}" >> "$PGDATA/postgresql.conf"
        # The setup's own commits must not wait for a synchronous standby
        # that cannot exist before this server is up.
        pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c synchronous_standby_names=''" \
            -w start >/dev/null
        if [ "$AUTH" = trust ]; then
            psql -v ON_ERROR_STOP=1 -U postgres -d postgres -q \
                -c "CREATE ROLE replicator WITH REPLICATION LOGIN"
        else
            psql -v ON_ERROR_STOP=1 -U postgres -d postgres -q \
                -v password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SQL
        fi
        for slot in ${STANDBY_SLOTS:-}; do
            psql -v ON_ERROR_STOP=1 -U postgres -d postgres -q \
                -c "SELECT pg_create_physical_replication_slot('$slot')" >/dev/null
        done
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    else
        : "${PRIMARY_HOST:?PRIMARY_HOST must be set for a standby}"
        : "${STANDBY_NAME:?STANDBY_NAME must be set for a standby}"
        until pg_isready -q -h "$PRIMARY_HOST" -p 5432; do sleep 1; done
        PGPASSWORD="${REPLICATION_PASSWORD:-}" pg_basebackup -h "$PRIMARY_HOST" -U replicator \
            -D "$PGDATA" -X stream -S "$STANDBY_NAME" -R
        conninfo="host=$PRIMARY_HOST user=replicator"
        if [ "$AUTH" != trust ]; then
            conninfo="$conninfo password=$REPLICATION_PASSWORD"
        fi
        {
            echo "primary_conninfo = '$conninfo application_name=$STANDBY_NAME'"
            echo "primary_slot_name = '$STANDBY_NAME'"
        } >> "$PGDATA/postgresql.auto.conf"
    fi
fi

# NODE_NAME: the node's name as cluster_name (in ps, and for clients to see).
exec "$@" ${NODE_NAME:+-c cluster_name=$NODE_NAME}
