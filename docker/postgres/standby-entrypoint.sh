#!/bin/bash
# A standby: on first start, clone the primary with pg_basebackup (through its
# slot), then run the official entrypoint as usual.
set -euo pipefail

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    until pg_isready -h "$PRIMARY_HOST" -p 5432 -U postgres; do sleep 1; done
    PGPASSWORD="$REPLICATION_PASSWORD" gosu postgres pg_basebackup \
        -h "$PRIMARY_HOST" -U replicator -D "$PGDATA" -X stream -S "$STANDBY_NAME" -R
    conninfo="host=$PRIMARY_HOST user=replicator password=$REPLICATION_PASSWORD application_name=$STANDBY_NAME"
    echo "primary_conninfo = '$conninfo'" >> "$PGDATA/postgresql.auto.conf"
    echo "primary_slot_name = '$STANDBY_NAME'" >> "$PGDATA/postgresql.auto.conf"
fi

exec docker-entrypoint.sh postgres -c hot_standby=on -c wal_log_hints=on \
    -c max_wal_senders=10 -c max_replication_slots=10 -c wal_receiver_timeout=5s
