#!/usr/bin/env bash
# The supply-chain gate of .ci/run (docs/operations.md, "Supply chain"): `cargo deny check` with
# deny.toml — advisories, licences, bans, sources.
#
#   scripts/cargo-deny.sh                      install the pinned cargo-deny if missing, then check
#   scripts/cargo-deny.sh --refresh-snapshot   rebuild deploy/supply-chain/rustsec-advisory-db.tar.gz
#                                              from a fresh clone of the RustSec database
#
# Advisories come from the RustSec database. When it can be fetched it is; otherwise (the machine
# this project is built on reaches only the package registries) the committed snapshot is used and
# its revision and date are printed, so a stale snapshot is visible in every CI log.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.20.2
SNAPSHOT=deploy/supply-chain/rustsec-advisory-db.tar.gz
URL=https://github.com/rustsec/advisory-db
# Where cargo-deny looks for the database of deny.toml's `db-urls` under its `db-path`: the
# directory is named by cargo-deny from the URL (stable for a pinned cargo-deny version).
DB=target/advisory-dbs/advisory-db-3157b0e258782691

if [[ "${1:-}" == "--refresh-snapshot" ]]; then
  work=$(mktemp -d)
  git clone --quiet --depth 1 "$URL" "$work/db"
  (cd "$work/db" && git log -1 --format='%H %cI' > REVISION \
    && tar czf - --owner=0 --group=0 --sort=name REVISION LICENSE.txt crates) > "$SNAPSHOT"
  rm -rf "$work"
  echo "snapshot refreshed: $SNAPSHOT"
  exit 0
fi

if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $VERSION"; then
  cargo install --locked "cargo-deny@$VERSION"
fi

if cargo deny fetch db >/dev/null 2>&1; then
  echo "advisory database: fetched from $URL"
else
  rm -rf "$DB" && mkdir -p "$DB"
  tar xzf "$SNAPSHOT" -C "$DB"
  # cargo-deny dates the database by its HEAD commit: one commit at the snapshot's own date.
  date=$(cut -d' ' -f2 "$DB/REVISION")
  git -C "$DB" init --quiet
  git -C "$DB" add --all
  GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" git -C "$DB" \
    -c user.name=snapshot -c user.email=snapshot@localhost commit --quiet -m "RustSec snapshot"
  echo "advisory database: the committed snapshot, revision $(cat "$DB/REVISION")"
fi

cargo deny --offline check --hide-inclusion-graph
