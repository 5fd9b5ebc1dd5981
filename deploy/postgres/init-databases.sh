#!/usr/bin/env bash
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d):
# one role and one database per service, the role owning its database only and nothing else
# (docs/operations.md, "Secrets and card tokens"). The passwords are compose secrets
# (scripts/gen-secrets.sh), read from /run/secrets and passed to psql as variables, quoted by
# psql (:'pw'), never interpolated into SQL text by the shell. SAGAFLOW_SECRETS_DIR and
# SAGAFLOW_DB_PREFIX (default /run/secrets, sagaflow) let it run against another server.
set -euo pipefail

secrets=${SAGAFLOW_SECRETS_DIR:-/run/secrets}
prefix=${SAGAFLOW_DB_PREFIX:-sagaflow}

for db in order coupon inventory payment point ranking workflow; do
  password_file="$secrets/${db}-db-password"
  password=$(tr -d '\r\n' < "$password_file")
  if [ -z "$password" ]; then
    echo "init-databases: $password_file is empty (run scripts/gen-secrets.sh)" >&2
    exit 1
  fi
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v role="${prefix}_${db}" -v pw="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw' NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE DATABASE :"role" OWNER :"role";
-- Only its owner connects to it (PUBLIC may connect to every database by default).
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
SQL
  echo "init-databases: role and database ${prefix}_${db}"
done
