#!/bin/bash
# Runs once, when the primary's data directory is created: a replication
# role, one physical slot per standby, and replication connections allowed.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres <<SQL
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '${REPLICATION_PASSWORD}';
SELECT pg_create_physical_replication_slot('pg_standby1');
SELECT pg_create_physical_replication_slot('pg_standby2');
SQL

echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
