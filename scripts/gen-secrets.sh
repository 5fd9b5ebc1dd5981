#!/usr/bin/env bash
# Makes the secrets of the compose deployment (compose.yaml `secrets:`; docs/operations.md,
# "Secrets and card tokens"), with the openssl command line:
#
#   <dir>/postgres.password            the PostgreSQL superuser's (used only by the init script,
#                                      deploy/postgres/init-databases.sh; no service uses it)
#   <dir>/<db>.db-password             one per service database (order coupon inventory payment
#                                      point ranking workflow): the password of role
#                                      sagaflow_<db>, which owns database sagaflow_<db> only
#   <dir>/card-token.key               the card-token key the order and payment services share
#   <dir>/grafana-admin.password       Grafana's admin
#
# Usage: scripts/gen-secrets.sh [DIR]   (default ./secrets). Existing files are kept (a new
# database password would no longer match the role the init script created on the first start).
# The directory is the owner's only (0700); the files in it are 0644 because compose without a
# swarm mounts a secret with its host owner and mode, and the services run as other users.
set -euo pipefail

dir=${1:-secrets}
mkdir -p "$dir"
chmod 700 "$dir"

make() {
  local file="$dir/$1"
  if [ ! -f "$file" ]; then
    openssl rand -hex 32 > "$file"
    chmod 644 "$file"
    echo "made $file"
  fi
}

make postgres.password
for db in order coupon inventory payment point ranking workflow; do
  make "$db.db-password"
done
make card-token.key
make grafana-admin.password
